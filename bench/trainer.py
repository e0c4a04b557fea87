"""Trainer benchmarks, one run, side by side (this machine is noisy):

  throughput  agent updates per second with batches from the buffer service
              (a subprocess on 127.0.0.1, through the SDK's prefetching
              stream) against batches from an in-process torchrl buffer built
              the way TD-MPC2 builds its own (LazyTensorStorage +
              SliceSampler); same agent, same data, interleaved rounds.
              Target: remote >= 0.95 x in-process.
  blocking    the trainer's blocking time per checkpoint (both buffer
              captures and the copy of its state; the upload runs in the
              background) with 100k and 1M transitions stored.
              Target: < 50 ms.

Writes bench/results/trainer.json.

    python -m bench.trainer [--model-size tiny] [--rounds 3] [--updates 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rewind import BufferClient, CheckpointClient
from rewind_runtime.local import LocalService
from rewind_trainer.agent import TDMPC2
from rewind_trainer.checkpointer import Checkpointer, Cut
from rewind_trainer.connections import parts_of
from rewind_trainer.hparams import AgentConfig

RESULTS = Path(__file__).resolve().parent / "results"
OBS_DIM, ACTION_DIM, EPISODE = 3, 1, 200   # Pendulum-v1's shapes


def episodes(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        action = torch.rand(EPISODE + 1, ACTION_DIM, generator=g) * 2 - 1
        reward = -torch.rand(EPISODE + 1, generator=g) * 10
        action[0], reward[0] = float("nan"), float("nan")
        out.append({"obs": torch.randn(EPISODE + 1, OBS_DIM, generator=g), "action": action, "reward": reward,
                    "done": torch.zeros(EPISODE + 1)})
    return out


class TorchRLBuffer:
    """TD-MPC2's own buffer: torchrl storage and slice sampler in this process."""

    def __init__(self, capacity: int, batch_size: int, horizon: int) -> None:
        from tensordict import TensorDict
        from torchrl.data.replay_buffers import LazyTensorStorage, ReplayBuffer, SliceSampler

        self._td = TensorDict
        self.batch_size, self.horizon = batch_size, horizon
        self.rb = ReplayBuffer(storage=LazyTensorStorage(capacity), batch_size=batch_size * (horizon + 1),
                               sampler=SliceSampler(num_slices=batch_size, end_key=None, traj_key="episode",
                                                    truncated_key=None, strict_length=True), prefetch=0)
        self.num_eps = 0

    def add(self, episode: dict[str, torch.Tensor]) -> None:
        td = self._td({**episode, "episode": torch.full((EPISODE + 1,), self.num_eps)}, batch_size=[EPISODE + 1])
        self.rb.extend(td)
        self.num_eps += 1

    def sample(self):
        td = self.rb.sample().view(-1, self.horizon + 1).permute(1, 0)
        return td["obs"], td["action"][1:], td["reward"][1:].unsqueeze(-1), td["done"][1:].unsqueeze(-1)


def throughput(args, data) -> dict:
    cfg = AgentConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, episode_length=EPISODE, model_size=args.model_size)
    local = TorchRLBuffer(100_000, cfg.batch_size, cfg.horizon)
    for ep in data:
        local.add(ep)
    with LocalService(["buffer", "serve", "--batch-size", str(cfg.batch_size), "--horizon", str(cfg.horizon),
                       "--min-history", "0", "--buffer-size", "100000"]) as service:
        remote = BufferClient(service.address)
        remote.load(data)
        agent = TDMPC2(cfg, seed=1)
        for _ in range(5):  # warm-up: allocator, autograd graph
            agent.update(*local.sample())
        rates = {"in_process": [], "remote": []}
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.updates):
                agent.update(*local.sample())
            rates["in_process"].append(args.updates / (time.perf_counter() - started))
            with remote.batches(prefetch=4, num_batches=args.updates) as stream:
                started = time.perf_counter()
                for batch in stream:
                    agent.update(*batch)
                rates["remote"].append(args.updates / (time.perf_counter() - started))
        remote.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {"model_size": args.model_size, "batch_size": cfg.batch_size, "updates_per_round": args.updates,
            "rounds": args.rounds, "updates_per_s": rates, "median_updates_per_s": medians,
            "ratio_remote_over_in_process": medians["remote"] / medians["in_process"], "target": 0.95}


def blocking(args) -> dict:
    cfg = AgentConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, episode_length=EPISODE, model_size=args.model_size)
    agent = TDMPC2(cfg, seed=1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalService(["ckpt", "serve", "--store", f"file://{tmp}/store"]) as ckpt_service:
        for transitions in (100_000, 1_000_000):
            n_eps = transitions // EPISODE
            with LocalService(["buffer", "serve", "--batch-size", str(cfg.batch_size), "--min-history", "0",
                               "--buffer-size", str(transitions + 10 * EPISODE)]) as service:
                buffer = BufferClient(service.address)
                data = episodes(50, seed=1)
                for start in range(0, n_eps, 50):
                    buffer.load(data[: min(50, n_eps - start)])
                test_buffer = buffer.using("test_buffer")
                test_buffer.load(data[:10])
                ckpt = CheckpointClient(ckpt_service.address)
                checkpointer = Checkpointer(ckpt, "bench", f"blocking-{transitions}",
                                            parts_of([buffer], test_buffer, transitions + 10 * EPISODE),
                                            {"keep_last": 1}, Cut(routing_seed=1, generation=1))
                times = []
                for i in range(args.rounds):
                    job = checkpointer.start(i + 1, 0, lambda: {"agent": agent.state_dict()}, {}, {}, {}, {})
                    times.append(job.blocking_ms)
                    job.done.result(timeout=1800)
                stored = buffer.stats().transitions
                out[str(transitions)] = {"stored_transitions": stored, "blocking_ms": times,
                                         "median_blocking_ms": statistics.median(times)}
                for client in (buffer, test_buffer, ckpt):
                    client.close()
    return {"model_size": args.model_size, "target_ms": 50, "by_transitions": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=60)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    report = {"throughput": throughput(args, episodes(100)), "blocking": blocking(args)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainer.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
