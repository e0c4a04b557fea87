"""Checkpoint benchmark: saving and restoring a 256 MiB checkpoint through the
service, against plain transfers of the same bytes to the same store.

One run, interleaved rounds, medians (this machine is noisy):

  s3    the service (`rewind ckpt serve --store s3://...` in a subprocess,
        CheckpointClient.save / .read, which PUT and GET the file straight to
        and from the store through presigned URLs) against plain boto3
        upload_fileobj / get_object of the same bytes to the same S3 server
        (moto's standalone server on 127.0.0.1, started here unless
        --s3-endpoint is given)
  file  the service over file:// against plain file writes (write + fsync)
        and reads of the same bytes on the same file system

Both sides start from bytes in memory and end with bytes in memory, and both
check nothing beyond what they always do: on S3 the client hashes every byte
once each way (sha256), on file:// the client and the service both do; plain
transfers hash nothing.

Target: service >= 0.9 x the plain transfer, both ways.

    python -m bench.checkpoint [--mib 256] [--rounds 3] [--s3-endpoint http://127.0.0.1:9000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3

from rewind import CheckpointClient
from rewind_runtime.local import LocalService

REPO = Path(__file__).resolve().parent.parent


def s3_support():
    """tests.support.s3: the moto launcher the tests use (the benchmarks run as `python -m bench.<name>`
    from the repository root, so the tests' helpers import as a package)."""
    from tests.support import s3

    return s3


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def plain_file_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def run(args: argparse.Namespace) -> dict:
    data = os.urandom(args.mib * 2**20)
    work = Path(tempfile.mkdtemp(prefix="rewind-bench-ckpt-"))
    env, moto = s3_support().s3_environment(args.s3_endpoint, work)
    os.environ.update(env)
    s3 = boto3.client("s3")
    bucket = f"rewind-bench-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    services = {
        "s3": LocalService(["ckpt", "serve", "--store", f"s3://{bucket}/service"], stdout=open(work / "s3.log", "wb")),
        "file": LocalService(["ckpt", "serve", "--store", f"file://{work}/store"],
                             stdout=open(work / "file.log", "wb")),
    }
    times: dict[str, list[float]] = {}
    direct: dict[str, int] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    try:
        clients = {k: CheckpointClient(s.address, timeout=600) for k, s in services.items()}
        for i in range(args.rounds):
            step = i + 1
            keep = {"keep_last": 1}
            for store in ("s3", "file"):
                client = clients[store]
                seconds, saved = timed(client.save, "bench", "run", step, {"model.bin": data}, retention=keep)
                record(f"{store}.service.save", seconds)
                direct[store] = saved.direct_bytes  # on S3 the bytes skip the service (presigned PUT)
                seconds, got = timed(client.read, f"bench/run/{step}", "model.bin")
                record(f"{store}.service.restore", seconds)
                assert got == data
                if store == "s3":
                    seconds, _ = timed(s3.upload_fileobj, io.BytesIO(data), bucket, f"plain/{step}")
                    record("s3.plain.save", seconds)
                    seconds, got = timed(lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
                                         f"plain/{step}")
                    record("s3.plain.restore", seconds)
                    s3.delete_object(Bucket=bucket, Key=f"plain/{step}")
                else:
                    plain = work / f"plain-{step}.bin"
                    record("file.plain.save", timed(plain_file_write, plain, data)[0])
                    seconds, got = timed(plain.read_bytes)
                    record("file.plain.restore", seconds)
                    plain.unlink()
                assert got == data
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  flush=True)
    finally:
        for s in services.values():
            s.terminate()
        if moto is not None:
            moto.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    mib_s = {k: args.mib / v for k, v in med.items()}
    ratios = {f"{store}.{way}": med[f"{store}.plain.{way}"] / med[f"{store}.service.{way}"]
              for store in ("s3", "file") for way in ("save", "restore")}
    return {"mib": args.mib, "rounds": args.rounds, "median_s": med, "mib_per_s": mib_s, "ratios": ratios,
            "raw_s": times, "direct_bytes": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="checkpoint size in MiB (default 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3-endpoint", help="use this S3 server instead of starting moto")
    parser.add_argument("--out", default="bench/results/checkpoint.json")
    args = parser.parse_args()
    result = run(args)
    print(f"\n{args.mib} MiB checkpoint, median of {args.rounds} rounds (MiB/s; ratio = service / plain):")
    for store in ("s3", "file"):
        for way in ("save", "restore"):
            s, p = result["mib_per_s"][f"{store}.service.{way}"], result["mib_per_s"][f"{store}.plain.{way}"]
            ratio = result["ratios"][f"{store}.{way}"]
            print(f"  {store:<4} {way:<7}  service {s:8.1f}   plain {p:8.1f}   ratio {ratio:.2f}  "
                  f"{'(target 0.9: met)' if ratio >= 0.9 else '(target 0.9: NOT met)'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
