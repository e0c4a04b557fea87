"""Incremental checkpoint benchmark: what a checkpoint costs once the buffer is in the store.

One run, real services (`rewind buffer serve` and `rewind ckpt serve --store s3://...` subprocesses)
on moto's S3 server on 127.0.0.1, side by side with the whole-snapshot path:

  1. state   fill a buffer with --transitions (obs 64, action 8, float32; 500-step episodes) and
             checkpoint it as blocks; add one 500-step episode and checkpoint again. The second
             upload should be < 2% of the first. The whole-snapshot save of the same buffer is timed
             beside it.
  2. pixels  the same pair with uint8 3x64x64 observations (--pixel-transitions; 1M pixel
             transitions are ~12 GB, more than this machine's budget for one benchmark, so the
             default is scaled down and the table says so).
  3. sigterm with --sigterm-transitions stored (5M by default) and a periodic checkpoint taken, one
             more episode, then what the trainer's SIGTERM handler does: capture every buffer and save
             them with its trainer.pt (a --trainer-mib file); timed from the capture to the commit.
  4. restore restore time of the 1M state checkpoint into a fresh buffer service, blocks and whole
             snapshot, and that service's peak RSS (VmHWM) against the stored tensor bytes.
  5. stall   Capture latency (what the trainer waits for) at --transitions stored while another
             process adds episodes and samples batches from the same buffer.

    python -m bench.incremental [--transitions 1000000] [--pixel-transitions 100000]
                                [--sigterm-transitions 5000000] [--out bench/results/incremental.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3
import torch

from rewind import BufferClient, CheckpointClient
from rewind.checkpoint_client import buffer_source
from rewind_runtime.local import LocalService

REPO = Path(__file__).resolve().parent.parent
STEPS, ACT = 500, 8
BATCH, HORIZON = 256, 3


def s3_support():
    """tests.support.s3: the moto launcher the tests use (the benchmarks run as `python -m bench.<name>`
    from the repository root, so the tests' helpers import as a package)."""
    from tests.support import s3

    return s3


def episodes(seed: int, n: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    if obs_dtype == torch.uint8:
        obs = [torch.randint(0, 256, (STEPS, *obs_shape), generator=g, dtype=torch.uint8) for _ in range(n)]
    else:
        obs = [torch.randn(STEPS, *obs_shape, generator=g) for _ in range(n)]
    return [{"obs": o, "action": torch.randn(STEPS, ACT, generator=g), "reward": torch.randn(STEPS, generator=g),
             "done": torch.zeros(STEPS)} for o in obs]


def buffer_service(capacity: int) -> LocalService:
    service = LocalService(
        ["--log-level", "WARNING", "buffer", "serve", "--buffers", "buffer", "--buffer-size", str(capacity),
         "--batch-size", str(BATCH), "--horizon", str(HORIZON), "--min-history", "0", "--storage-device", "cpu",
         "--max-transitions", str(max(capacity, 50_000_000)), "--max-storage-mb", "0", "--max-message-mb", "64"],
        wait=False)
    service.wait_until_serving()
    return service


def fill(client: BufferClient, transitions: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype) -> float:
    start, per_load = time.perf_counter(), max(1, (32 * 2**20) // (STEPS * max(1, _obs_bytes(obs_shape, obs_dtype))))
    for first in range(0, transitions // STEPS, per_load):
        client.load(episodes(first, min(per_load, transitions // STEPS - first), obs_shape, obs_dtype))
    return time.perf_counter() - start


def _obs_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def save(ckpt: CheckpointClient, address: str, step: int, *, blocks: bool, run: str, files=None, capture: bool = False):
    """(seconds, Saved) of one checkpoint of the buffer, timed from the capture (if any) to the commit."""
    start = time.perf_counter()
    capture_id = ""
    if capture:
        with BufferClient(address, "buffer", timeout=600) as client:
            capture_id = client.capture().capture_id
    saved = ckpt.save("bench", run, step, files or {}, timeout=1800,
                      buffers=[buffer_source(address, "buffer", capture_id=capture_id, blocks=blocks)])
    return time.perf_counter() - start, saved


def pair(ckpt: CheckpointClient, transitions: int, obs_shape, obs_dtype, run: str, result: dict,
         key: str) -> tuple[str, str]:
    """Fill, checkpoint (blocks), add one episode, checkpoint again; the whole-snapshot save beside it."""
    service = buffer_service(transitions)
    try:
        with BufferClient(service.address, "buffer", timeout=1800) as client:
            fill_s = fill(client, transitions, obs_shape, obs_dtype)
            stats = client.stats()
            first_s, first = save(ckpt, service.address, 1, blocks=True, run=run)
            client.load(episodes(10**6, 1, obs_shape, obs_dtype))
            second_s, second = save(ckpt, service.address, 2, blocks=True, run=run)
            whole_s, whole = save(ckpt, service.address, 1, blocks=False, run=run + "-whole")
        result[key] = {
            "transitions": stats.transitions, "stored_bytes": stats.bytes, "fill_s": fill_s,
            "first": {"seconds": first_s, "uploaded_bytes": first.uploaded_bytes},
            "second": {"seconds": second_s, "uploaded_bytes": second.uploaded_bytes,
                       "deduplicated_bytes": second.deduplicated_bytes},
            "second_over_first": second.uploaded_bytes / first.uploaded_bytes,
            "whole_snapshot": {"seconds": whole_s, "uploaded_bytes": whole.uploaded_bytes},
        }
        print(f"{key}: {json.dumps(result[key])}", flush=True)
        return second.checkpoint.path, whole.checkpoint.path
    finally:
        service.kill()


def restore(ckpt: CheckpointClient, path: str, capacity: int, stored_bytes: int, result: dict, key: str) -> None:
    """Restore into a fresh buffer service; seconds and its peak RSS over its RSS before."""
    service = buffer_service(capacity)
    try:
        before = peak_rss(service.proc.pid)
        start = time.perf_counter()
        ckpt.restore_buffers(path, [(service.address, "buffer")], timeout=1800)
        seconds = time.perf_counter() - start
        peak = peak_rss(service.proc.pid)
        result[key] = {"seconds": seconds, "rss_before": before, "peak_rss": peak,
                       "peak_growth_over_stored": (peak - before) / stored_bytes}
        print(f"{key}: {json.dumps(result[key])}", flush=True)
    finally:
        service.kill()


def sigterm(ckpt: CheckpointClient, transitions: int, trainer_mib: int, result: dict) -> None:
    service = buffer_service(transitions)
    trainer_pt = os.urandom(trainer_mib * 2**20)
    try:
        with BufferClient(service.address, "buffer", timeout=1800) as client:
            fill_s = fill(client, transitions, (64,), torch.float32)
            periodic_s, periodic = save(ckpt, service.address, 1, blocks=True, run="sigterm",
                                        files={"trainer.pt": trainer_pt})
            client.load(episodes(10**6, 1, (64,), torch.float32))
            final_s, final = save(ckpt, service.address, 2, blocks=True, run="sigterm",
                                  files={"trainer.pt": os.urandom(trainer_mib * 2**20)}, capture=True)
            stats = client.stats()
        result["sigterm"] = {"transitions": stats.transitions, "stored_bytes": stats.bytes, "fill_s": fill_s,
                             "trainer_mib": trainer_mib,
                             "periodic": {"seconds": periodic_s, "uploaded_bytes": periodic.uploaded_bytes},
                             "final": {"seconds": final_s, "uploaded_bytes": final.uploaded_bytes}}
        print(f"sigterm: {json.dumps(result['sigterm'])}", flush=True)
    finally:
        service.kill()


def load(address: str, stop, counts) -> None:
    """The background writer and sampler (a process of its own): adds and samples until `stop` is set."""
    torch.set_num_threads(1)
    data = episodes(20_000, 20, (64,), torch.float32)
    with BufferClient(address, "buffer", timeout=120.0) as client:
        while not stop.is_set():
            client.load(data)
            counts[0] += len(data)
            for _ in range(10):
                client.sample()
                counts[1] += 1


def stall(ckpt: CheckpointClient, transitions: int, rounds: int, result: dict) -> None:
    """Capture latency under load, each capture then saved as blocks (as the trainer does)."""
    service = buffer_service(transitions)
    spawn = mp.get_context("spawn")  # not fork: this process has gRPC channels open
    stop, counts = spawn.Event(), spawn.Array("q", 2)
    try:
        with BufferClient(service.address, "buffer", timeout=1800) as client:
            fill(client, transitions, (64,), torch.float32)
            worker = spawn.Process(target=load, args=(service.address, stop, counts), daemon=True)
            worker.start()
            captures, saves = [], []
            while counts[1] < 10:  # the load is running before the first capture
                time.sleep(0.05)
            for step in range(1, rounds + 1):
                start = time.perf_counter()
                capture_id = client.capture().capture_id
                captures.append((time.perf_counter() - start) * 1e3)
                saves.append(ckpt.save("bench", "stall", step, {}, timeout=1800, buffers=[
                    buffer_source(service.address, "buffer", capture_id=capture_id, blocks=True)]).uploaded_bytes)
        stop.set()
        worker.join(timeout=120)
        result["stall"] = {"transitions": transitions, "rounds": rounds, "capture_ms": captures,
                           "capture_ms_median": statistics.median(captures), "capture_ms_max": max(captures),
                           "uploaded_bytes": saves, "load": {"episodes_added": counts[0], "batches": counts[1]}}
        print(f"stall: {json.dumps(result['stall'])}", flush=True)
    finally:
        stop.set()
        service.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--pixel-transitions", type=int, default=100_000)
    parser.add_argument("--sigterm-transitions", type=int, default=5_000_000)
    parser.add_argument("--trainer-mib", type=int, default=16, help="size of the trainer.pt saved on SIGTERM")
    parser.add_argument("--stall-rounds", type=int, default=5)
    parser.add_argument("--s3-endpoint", help="use this S3 server instead of starting moto")
    parser.add_argument("--out", default="bench/results/incremental.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rewind-bench-incremental-"))
    env, moto = s3_support().s3_environment(args.s3_endpoint, work)
    os.environ.update(env)
    bucket = f"rewind-bench-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    # A long store timeout: moto assembles a multipart upload of a GB-sized whole snapshot slowly, and a
    # retried CompleteMultipartUpload fails there (500) once the first has gone through.
    ckpt_service = LocalService(["--log-level", "WARNING", "ckpt", "serve", "--store", f"s3://{bucket}/bench",
                                 "--store-timeout-s", "600"],
                                stdout=open(work / "ckpt.log", "wb"))
    result: dict = {"cpus": os.cpu_count(), "store": "s3 (moto on 127.0.0.1)"}
    try:
        with CheckpointClient(ckpt_service.address, timeout=1800) as ckpt:
            path, whole = pair(ckpt, args.transitions, (64,), torch.float32, "state", result, "state")
            stored = result["state"]["stored_bytes"]
            restore(ckpt, path, args.transitions, stored, result, "restore_blocks")
            restore(ckpt, whole, args.transitions, stored, result, "restore_whole_snapshot")
            pair(ckpt, args.pixel_transitions, (3, 64, 64), torch.uint8, "pixels", result, "pixels")
            stall(ckpt, args.transitions, args.stall_rounds, result)
            sigterm(ckpt, args.sigterm_transitions, args.trainer_mib, result)
    finally:
        ckpt_service.terminate()
        if moto is not None:
            moto.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
