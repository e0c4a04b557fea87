"""`rewind train` in a subprocess, with the tiny agent the trainer tests use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from rewind import TrainerClient
from rewind.security import ClientSecurity
from rewind_trainer.settings import TrainSettings
from tests.support.processes import free_port

AGENT = {"batch_size": 8, "num_samples": 32, "num_elites": 4, "num_pi_trajs": 2, "iterations": 2}
AGENT_FLAGS = [arg for k, v in AGENT.items() for arg in ("--agent", f"{k}={v}")]
BUFFER_FLAGS = ["--batch-size", "8", "--horizon", "3", "--min-history", "0", "--buffer-size", "20000"]


class TrainerProcess:
    """`rewind train` in a subprocess against the given services, with its trainer service on a known port."""

    def __init__(self, tmp_path: Path, buffer: str, ckpt: str, *args: str, env: dict[str, str] | None = None,
                 security: ClientSecurity | None = None, port: int = 0) -> None:
        self.port = port or free_port()  # a port given: a learner restarted where its collectors look for it
        self.log = open(tmp_path / f"trainer-{self.port}.log", "ab")  # closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewind_cli", "train", "--model-size", "tiny", "--seed-steps", "200",
             "--eval-freq", "400", "--eval-episodes", "1", "--checkpoint-interval-episodes", "0",
             *AGENT_FLAGS, "--buffer-address", buffer, "--checkpoint-address", ckpt, "--out-dir",
             str(tmp_path / "runs"), "--port", str(self.port), "--http-port", "0", "--no-progress", "--torch-threads",
             "1", *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, **(env or {})})
        self.client = TrainerClient(f"127.0.0.1:{self.port}", timeout=30, security=security)
        self.tmp_path = tmp_path

    def wait_until_step(self, step: int) -> int:
        """Checkpoint-now until the trainer is past `step`; returns the checkpoint's step."""
        self.client.wait_until_serving(timeout=120)
        while True:
            done_step, _ = self.client.checkpoint(wait=True, timeout=120)
            if done_step >= step:
                return done_step

    def stop(self) -> int:
        """Kill it if it still runs (a test's teardown); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=300)
        self.client.close()
        self.log.close()
        return code

    def output(self) -> str:
        return Path(self.log.name).read_text()


def tiny(**changes) -> TrainSettings:
    base = dict(model_size="tiny", seed_steps=200, eval_freq=400, eval_episodes=1, agent=AGENT, port=-1,
                checkpoint_interval_episodes=0, progress=False, buffer_size=20_000,
                torch_threads=1)  # as TrainerProcess runs: float sums depend on the thread count
    return TrainSettings(**{**base, **changes})


def params(agent) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in agent.model.state_dict().items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ: {different[:5]}"
