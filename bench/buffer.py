"""Buffer benchmark: the service (separate process, SDK, streaming) against torchrl in-process.

One run, same data, measured side by side in interleaved rounds (this machine
is noisy; medians are reported):

  data     100 episodes x 500 steps, obs 64, action 8, float32
  batches  256 sequences x 4 steps (horizon 3), TD-MPC2 layout

  in-process  TD-MPC2's recipe: torchrl ReplayBuffer + LazyTensorStorage +
              SliceSampler(strict_length), extend per episode, sample + layout
  core        rewind_buffer.EpisodeBuffer in this process (no gRPC)
  service     `rewind buffer serve` in a subprocess; BufferClient.load (client
              stream) / add (unary); batches() (server stream) / sample (unary)

Targets: remote sampling >= 0.9 x in-process; remote insert >= 0.8 x in-process.

    python -m bench.buffer [--rounds 5] [--batches 300] [--storage-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler

from rewind import BufferClient
from rewind_buffer.episode_buffer import EpisodeBuffer
from rewind_buffer.settings import BufferSettings
from rewind_runtime.local import LocalService

EPISODES, STEPS, OBS, ACT = 100, 500, 64, 8
BATCH, HORIZON = 256, 3
CAPACITY = EPISODES * STEPS


def make_episodes() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "obs": torch.randn(STEPS, OBS, generator=g),
            "action": torch.randn(STEPS, ACT, generator=g),
            "reward": torch.randn(STEPS, generator=g),
            "done": torch.zeros(STEPS),
        }
        for _ in range(EPISODES)
    ]


class TorchrlInProcess:
    """TD-MPC2's buffer recipe, verbatim in spirit (common/buffer.py)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.rb = ReplayBuffer(
            storage=LazyTensorStorage(CAPACITY, device=self.device),
            sampler=SliceSampler(num_slices=BATCH, end_key=None, traj_key="episode", truncated_key=None,
                                 strict_length=True),
            pin_memory=False,
            prefetch=0,
            batch_size=BATCH * (HORIZON + 1),
        )
        self.num_eps = 0

    def add(self, ep: dict[str, torch.Tensor]) -> None:
        td = TensorDict(ep, batch_size=[STEPS])
        td["episode"] = torch.full((STEPS,), self.num_eps, dtype=torch.int64)
        self.rb.extend(td)
        self.num_eps += 1

    def sample(self):
        td = self.rb.sample().view(-1, HORIZON + 1).permute(1, 0)
        return (td["obs"].contiguous(), td["action"][1:].contiguous(),
                td["reward"][1:].unsqueeze(-1).contiguous(), td["done"][1:].unsqueeze(-1).contiguous())


def insert_rate(add, episodes: list) -> float:
    """Episodes per second of add() over every episode."""
    start = time.perf_counter()
    for ep in episodes:
        add(ep)
    return len(episodes) / (time.perf_counter() - start)


def timed(fn, n: int) -> float:
    """Calls per second of fn over n calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--storage-device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default="bench/results/buffer.json")
    args = parser.parse_args()
    device = args.storage_device
    episodes = make_episodes()
    service = LocalService(
        ["--log-level", "WARNING", "buffer", "serve", "--buffer-size", str(CAPACITY), "--batch-size", str(BATCH),
         "--horizon", str(HORIZON), "--min-history", "0", "--storage-device", device, "--buffers", "warmup"]
    )
    address = service.address
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            # -- insert: episodes/s ------------------------------------------
            local = TorchrlInProcess(device)
            record("insert/in-process torchrl", insert_rate(local.add, episodes))
            core = EpisodeBuffer("core", BufferSettings(CAPACITY, BATCH, 0, HORIZON), storage_device=device)
            record("insert/core in-process", insert_rate(core.add, episodes))
            remote = BufferClient(address, f"load{r}")
            remote.create()
            start = time.perf_counter()
            remote.load(episodes)
            record("insert/service load (stream)", EPISODES / (time.perf_counter() - start))
            unary = BufferClient(address, f"add{r}")
            unary.create()
            record("insert/service add (unary)", insert_rate(unary.add, episodes))

            # -- sample: batches/s -------------------------------------------
            record("sample/in-process torchrl", timed(local.sample, args.batches))
            record("sample/core in-process", timed(core.sample, args.batches))
            remote.sample()  # warm up the channel
            with remote.batches(prefetch=8, num_batches=args.batches) as stream:
                start = time.perf_counter()
                n = sum(1 for _ in stream)
                record("sample/service stream", n / (time.perf_counter() - start))
            record("sample/service unary", timed(remote.sample, args.batches // 3))
            remote.close()
            unary.close()
    finally:
        service.terminate()

    med = {k: statistics.median(v) for k, v in results.items()}
    unit = {"insert": "episodes/s", "sample": "batches/s"}
    print(f"\nbuffer benchmark ({device} storage, {args.rounds} rounds, medians)")
    for name, value in med.items():
        kind = name.split("/")[0]
        print(f"  {name:34s} {value:10.1f} {unit[kind]}")
    ratios = {
        "sample: service stream / in-process torchrl (target >= 0.9)":
            med["sample/service stream"] / med["sample/in-process torchrl"],
        "sample: service stream / core in-process":
            med["sample/service stream"] / med["sample/core in-process"],
        "insert: service load / in-process torchrl (target >= 0.8)":
            med["insert/service load (stream)"] / med["insert/in-process torchrl"],
        "insert: service add / in-process torchrl":
            med["insert/service add (unary)"] / med["insert/in-process torchrl"],
    }
    print("ratios")
    for name, value in ratios.items():
        print(f"  {name:62s} {value:5.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "medians": med, "ratios": ratios, "raw": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
