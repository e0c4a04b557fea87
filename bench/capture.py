"""Capture benchmark: the trainer's stall (the Capture RPC) at 1M stored transitions, before and after.

One run, two buffer services side by side (`rewind buffer serve` subprocesses), filled with the same
data and driven the same way:

  full copy   the old capture: every used row copied under the buffer's lock
              (EpisodeBuffer.export_state(copy=True), switched on by a sitecustomize in that service)
  no copy     the capture as it is now: the capture point and a registration under the lock;
              rows are copied aside only before a write would overwrite one not yet streamed

  data        1,000,000 transitions (2,000 episodes x 500 steps), obs 64, action 8, float32
  idle        Capture with nothing else running, then the capture streamed (its bytes compared)
  loaded      Capture while another process adds episodes (`load`, 20 at a time) and samples
              batches (256 x 4 steps) from the same buffer as fast as it can, then the capture
              streamed while that load goes on

The Capture RPC's latency is what the trainer waits for (target: < 50 ms at 1M). Rounds
alternate between the two services; medians and maxima are reported.

    python -m bench.capture [--rounds 5] [--storage-device cpu|cuda] [--out bench/results/capture.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rewind import BufferClient
from rewind_runtime.local import LocalService

EPISODES, STEPS, OBS, ACT = 2_000, 500, 64, 8
CAPACITY = EPISODES * STEPS
BATCH, HORIZON = 256, 3
LOAD_EPISODES = 20  # per load call of the background writer

# Imported by the "full copy" service at start (its PYTHONPATH): the old capture, copy=True by default.
FULL_COPY_SITECUSTOMIZE = '''
import rewind_buffer.episode_buffer as _eb

_export_state = _eb.EpisodeBuffer.export_state


def _full_copy(self, expect_episodes_added=0, *, copy=True, **kwargs):
    return _export_state(self, expect_episodes_added, copy=copy, **kwargs)


_eb.EpisodeBuffer.export_state = _full_copy
print("bench/capture.py: this buffer service captures with a full copy (the old path)", flush=True)
'''


def episodes(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"obs": torch.randn(STEPS, OBS, generator=g), "action": torch.randn(STEPS, ACT, generator=g),
             "reward": torch.randn(STEPS, generator=g), "done": torch.zeros(STEPS)} for _ in range(n)]


def fill(client: BufferClient) -> None:
    for first in range(0, EPISODES, 100):
        client.load(episodes(first, 100))


def stream(client: BufferClient, capture_id: str) -> tuple[float, str, int]:
    """Seconds to stream a capture, its sha256 and size."""
    digest, size = hashlib.sha256(), 0
    start = time.perf_counter()
    for response in client.snapshot_stream(capture_id=capture_id):
        digest.update(response.chunk)
        size += len(response.chunk)
    return time.perf_counter() - start, digest.hexdigest(), size


def timed_capture(client: BufferClient) -> tuple[float, str]:
    start = time.perf_counter()
    capture_id = client.capture().capture_id
    return time.perf_counter() - start, capture_id


def load(address: str, stop, counts) -> None:
    """The background writer and sampler (a process of its own): adds and samples until `stop` is set."""
    torch.set_num_threads(1)
    data = episodes(10_000, LOAD_EPISODES)
    with BufferClient(address, "buffer", timeout=120.0) as client:
        while not stop.is_set():
            client.load(data)
            counts[0] += LOAD_EPISODES
            for _ in range(10):
                client.sample()
                counts[1] += 1


def start_service(device: str, full_copy: bool, pythonpath: str) -> LocalService:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))} \
        if full_copy else None
    return LocalService(
        ["--log-level", "WARNING", "buffer", "serve", "--buffers", "buffer", "--buffer-size", str(CAPACITY),
         "--batch-size", str(BATCH), "--horizon", str(HORIZON), "--min-history", "0", "--storage-device", device,
         "--max-captures", "1"], env=env, wait=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage-device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default="bench/results/capture.json")
    args = parser.parse_args()
    modes = ("full copy", "no copy")
    raw: dict[str, list[float]] = {}
    digests: dict[str, str] = {}

    def record(name: str, value: float) -> None:
        raw.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="rewind-bench-capture-") as site:
        Path(site, "sitecustomize.py").write_text(FULL_COPY_SITECUSTOMIZE)
        services = {mode: start_service(args.storage_device, mode == "full copy", site) for mode in modes}
        clients: dict[str, BufferClient] = {}
        counts_out: dict[str, dict[str, int]] = {}
        try:
            for mode, service in services.items():
                service.wait_until_serving()
                clients[mode] = BufferClient(service.address, "buffer", timeout=600.0)
                start = time.perf_counter()
                fill(clients[mode])
                stats = clients[mode].stats()
                print(f"{mode}: {stats.transitions:,} transitions, {stats.bytes / 2**20:.0f} MiB stored on "
                      f"{stats.device}, filled in {time.perf_counter() - start:.1f}s", flush=True)

            # Idle: same data, same calls, so the two snapshots must be the same bytes.
            for r in range(args.rounds):
                for mode in modes if r % 2 == 0 else reversed(modes):
                    seconds, capture_id = timed_capture(clients[mode])
                    record(f"idle/{mode}/capture_ms", seconds * 1e3)
                    stream_s, digest, size = stream(clients[mode], capture_id)
                    record(f"idle/{mode}/stream_s", stream_s)
                    if r == 0:
                        digests[mode] = digest
                    print(f"idle  {mode:9s} capture {seconds * 1e3:8.1f} ms, stream {size / 2**20:.0f} MiB "
                          f"in {stream_s:.2f}s", flush=True)

            # Loaded: a writer-and-sampler process on the buffer while it is captured and streamed.
            spawn = mp.get_context("spawn")  # not fork: this process has gRPC channels open
            for mode in modes:
                stop, counts = spawn.Event(), spawn.Array("q", 2)
                worker = spawn.Process(target=load, args=(services[mode].address, stop, counts), daemon=True)
                worker.start()
                try:
                    time.sleep(2.0)  # the load is running before the first capture
                    for _ in range(args.rounds):
                        seconds, capture_id = timed_capture(clients[mode])
                        record(f"loaded/{mode}/capture_ms", seconds * 1e3)
                        stream_s, _, size = stream(clients[mode], capture_id)
                        record(f"loaded/{mode}/stream_s", stream_s)
                        print(f"loaded {mode:9s} capture {seconds * 1e3:8.1f} ms, stream {size / 2**20:.0f} MiB "
                              f"in {stream_s:.2f}s", flush=True)
                        time.sleep(0.5)
                finally:
                    stop.set()
                    worker.join(timeout=120)
                counts_out[mode] = {"episodes_added": counts[0], "batches_sampled": counts[1]}
        finally:
            for client in clients.values():
                client.close()
            for service in services.values():
                service.kill()

    summary = {name: {"median": statistics.median(v), "max": max(v)} for name, v in raw.items()}
    result = {
        "device": args.storage_device, "transitions": CAPACITY, "obs": OBS, "action": ACT,
        "cpus": os.cpu_count(), "rounds": args.rounds,
        "identical_snapshots": digests.get("full copy") == digests.get("no copy"),
        "load_during_loaded_rounds": counts_out, "summary": summary, "raw": raw,
    }
    print(json.dumps({k: result[k] for k in ("identical_snapshots", "load_during_loaded_rounds", "summary")},
                     indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
