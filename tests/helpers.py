"""Test helpers: traceable episodes and subprocess services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
OBS_DIM = 3
ACTION_DIM = 2


def episode(eid: int, length: int, *, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM) -> dict[str, torch.Tensor]:
    """An episode whose every value encodes (episode id, step): eid * 1000 + t."""
    t = torch.arange(length, dtype=torch.float32) + 1000.0 * eid
    return {
        "obs": t.unsqueeze(-1) + torch.arange(obs_dim, dtype=torch.float32) * 0.125,
        "action": t.unsqueeze(-1).repeat(1, action_dim) + 0.5,
        "reward": t + 0.25,
        "done": (torch.arange(length) == length - 1).float(),
    }


def check_batch_against(batch, episodes: dict[int, dict[str, torch.Tensor]], horizon: int, batch_size: int) -> None:
    """Assert every sequence in `batch` is a contiguous slice of one stored episode."""
    obs, action, reward, done = batch
    assert obs.shape == (horizon + 1, batch_size, OBS_DIM)
    assert action.shape == (horizon, batch_size, ACTION_DIM)
    assert reward.shape == (horizon, batch_size, 1)
    assert done.shape == (horizon, batch_size, 1)
    for b in range(batch_size):
        first = int(obs[0, b, 0].item())
        eid, t0 = divmod(first, 1000)
        ep = episodes[eid]
        assert t0 + horizon < ep["obs"].shape[0], "sequence runs past its episode's end"
        torch.testing.assert_close(obs[:, b], ep["obs"][t0 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(action[:, b], ep["action"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(reward[:, b, 0], ep["reward"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(done[:, b, 0], ep["done"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)


class ServiceProcess:
    """`rewind buffer serve` in a subprocess on a free loopback port."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port_file = tmp_path / f"port-{time.monotonic_ns()}"
        self.log = open(tmp_path / "service.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewind", "buffer", "serve", "--host", "127.0.0.1", "--port", "0",
             "--port-file", str(self.port_file), *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.address = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early with {self.proc.returncode}")
            if self.port_file.exists() and self.port_file.read_text():
                return f"127.0.0.1:{self.port_file.read_text()}"
            time.sleep(0.02)  # polls a file the child writes once SERVING
        self.proc.kill()
        raise RuntimeError("service did not start")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()
