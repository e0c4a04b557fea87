"""Training-history benchmark: GET /api/training-runs/{agent}/{run} of a run with 1,000 checkpoints in S3.

One run of 1,000 committed checkpoints (small files; manifests written through
the store layer, as the service writes them) in moto's standalone S3 server,
and a real checkpoint service (`rewind ckpt serve --store s3://...`, a process
of its own) with its HTTP port. Measured, from this process, over HTTP:

  cold          the first GET after the service starts (lists the run and
                fetches 1,000 manifests)
  warm          200 GETs after a warm-up: p50 / p90 / p99 (the manifest index
                is cached; every 2 s a refresh lists the run's folders again)
  after commit  one GET right after a checkpoint is committed through the
                service (the catalog's notice invalidates the run: a listing,
                no manifest GET), several times
  page          the run's HTML page (1,000 rows with resume commands)

Target: warm p50 < 200 ms.

    python -m bench.history [--checkpoints 1000] [--requests 200] [--s3-endpoint http://127.0.0.1:9000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent
AGENT, RUN = "tdmpc2", "bench-1k"
TARGET_P50_MS = 200.0


def s3_support():
    """tests.support.s3: the moto launcher the tests use (the benchmarks run as `python -m bench.<name>`
    from the repository root, so the tests' helpers import as a package)."""
    from tests.support import s3

    return s3


def fill(store_url: str, count: int) -> None:
    """`count` committed checkpoints of one run (a small file and its manifest each), a status and a policy."""
    from rewind_checkpoint.layout import CheckpointKey, RunKey
    from rewind_checkpoint.manifest import FileEntry, Manifest, now_rfc3339
    from rewind_checkpoint.retention import RetentionPolicy
    from rewind_checkpoint.store import open_store

    store = open_store(store_url)
    run = RunKey(AGENT, RUN)
    # Retention off: the commits measured below must not delete the 1,000.
    store.put(run.retention_key, RetentionPolicy(keep_last=0).to_json())
    settings = {"local_services": True, "store": store_url, "task": "Pendulum-v1", "action_repeat": 2}

    def one(i: int) -> None:
        step = (i + 1) * 1000
        data = f"model at {step}".encode()
        key = CheckpointKey(run, step)
        store.put(key.file_key("model.pt"), data)
        manifest = Manifest(AGENT, RUN, step, i * 10, now_rfc3339(),
                            (FileEntry("model.pt", len(data), hashlib.sha256(data).hexdigest()),),
                            metrics={"eval_return": -1000.0 + i, "episode_return": -1100.0 + i},
                            config={"settings": settings, "agent_config": {"horizon": 3}})
        store.put(key.manifest_key, manifest.to_json())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    status = {"format": "rewind.run-status/1", "state": "running", "updated": now_rfc3339(),
              "heartbeat_interval_s": 30, "action_repeat": 2, "task": "Pendulum-v1", "message": ""}
    store.put(run.history_key("status.json"), json.dumps(status).encode())


def timed_get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - start, body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(base: str, address: str, args: argparse.Namespace) -> dict:
    """Every figure, against the service at `base` (HTTP) and `address` (gRPC)."""
    from rewind import CheckpointClient

    url = f"{base}/api/training-runs/{AGENT}/{RUN}"
    cold_s, body = timed_get(url)
    run = json.loads(body)
    assert len(run["checkpoint_paths"]) == args.checkpoints, len(run["checkpoint_paths"])
    for _ in range(args.warmup):
        timed_get(url)
    warm = [timed_get(url)[0] for _ in range(args.requests)]
    after_commit = []
    with CheckpointClient(address, timeout=60) as client:
        for i in range(args.commits):
            client.save(AGENT, RUN, (args.checkpoints + 1 + i) * 1000, {"model.pt": b"new"})
            seconds, body = timed_get(url)
            assert len(json.loads(body)["checkpoint_paths"]) == args.checkpoints + 1 + i
            after_commit.append(seconds)
    page = [timed_get(f"{base}/runs/{AGENT}/{RUN}")[0] for _ in range(args.pages)]
    runs_list = [timed_get(f"{base}/api/training-runs")[0] for _ in range(args.pages)]
    return {
        "checkpoints": args.checkpoints, "requests": args.requests, "response_bytes": len(body),
        "cold_first_ms": round(cold_s * 1000, 1),
        "warm_ms": {"p50": round(percentile(warm, 50) * 1000, 2), "p90": round(percentile(warm, 90) * 1000, 2),
                    "p99": round(percentile(warm, 99) * 1000, 2), "mean": round(statistics.mean(warm) * 1000, 2),
                    "max": round(max(warm) * 1000, 2)},
        "after_commit_ms": [round(v * 1000, 2) for v in after_commit],
        "page_p50_ms": round(statistics.median(page) * 1000, 1),
        "runs_list_p50_ms": round(statistics.median(runs_list) * 1000, 1),
        "target_p50_ms": TARGET_P50_MS,
        "met": percentile(warm, 50) * 1000 < TARGET_P50_MS,
        "cpus": os.cpu_count(),
    }


def run(args: argparse.Namespace) -> dict:
    from rewind_runtime.local import LocalService

    work = Path(tempfile.mkdtemp(prefix="rewind-bench-history-"))
    env, moto = s3_support().s3_environment(args.s3_endpoint, work)
    os.environ.update(env)
    bucket = f"rewind-bench-history-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store_url = f"s3://{bucket}/history"
    try:
        start = time.perf_counter()
        fill(store_url, args.checkpoints)
        print(f"wrote {args.checkpoints} checkpoints in {time.perf_counter() - start:.1f}s", flush=True)
        with open(work / "service.log", "wb") as log, \
                LocalService(["ckpt", "serve", "--store", store_url], stdout=log) as service:
            result = measure(service.http_url, service.address, args)
    finally:
        if moto is not None:
            moto.stop()
    return {"store": "s3 (moto standalone server on 127.0.0.1)", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--commits", type=int, default=5, help="GETs measured right after a commit")
    parser.add_argument("--pages", type=int, default=10, help="GETs of the run page and of the runs list")
    parser.add_argument("--s3-endpoint", help="use this S3 server instead of starting moto")
    parser.add_argument("--out", default="bench/results/history.json")
    args = parser.parse_args()
    result = run(args)
    warm = result["warm_ms"]
    print(f"\nGET /api/training-runs/{AGENT}/{RUN}, {result['checkpoints']} checkpoints in S3 (moto), "
          f"{result['response_bytes'] / 1024:.0f} KiB of JSON:")
    print(f"  {'cold (first call)':<26} {result['cold_first_ms']:9.1f} ms")
    for name in ("p50", "p90", "p99"):
        print(f"  {'warm ' + name + f' ({args.requests} GETs)':<26} {warm[name]:9.1f} ms")
    print(f"  {'right after a commit':<26} {statistics.median(result['after_commit_ms']):9.1f} ms (median of "
          f"{len(result['after_commit_ms'])})")
    print(f"  {'run page (HTML), p50':<26} {result['page_p50_ms']:9.1f} ms")
    print(f"  {'runs list (JSON), p50':<26} {result['runs_list_p50_ms']:9.1f} ms")
    print(f"target: warm p50 < {TARGET_P50_MS:.0f} ms: {'met' if result['met'] else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
