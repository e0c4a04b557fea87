"""Fuzz every RPC of the buffer, checkpoint and trainer services with seeded mutations of valid requests.

The services run in this process (the checkpoint service on file:// and on
moto's S3 server); tests/support/fuzz.py does the work, the same code that
tests/service/test_fuzz.py runs with 100 requests per RPC. Each RPC gets its
unmutated template, then --per-rpc mutated requests: field edge values, byte
damage to the serialized message (malformed protobuf reaches the server),
reordered request streams, re-signed buffer snapshots. A request fails the
run when it is answered INTERNAL or UNKNOWN, runs past its deadline, or is
refused but changed state (listings, stats, the store's files).

    python -m bench.fuzz                                   # 1,000 per RPC (200 on S3), every service
    python -m bench.fuzz --per-rpc 200 --services buffer   # quicker, one service
    python -m bench.fuzz --rpc CheckpointService/Save --store file
    python -m bench.fuzz --rpc BufferService/Restore --only 17 42 --verbose   # replay two requests

Prints a table of status counts per RPC and each distinct failure (with the
server's traceback); writes bench/results/fuzz.json. Exits 1 when any
failure appeared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# torchrl logs every storage allocation at INFO, once per buffer the fuzzer makes.
os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

from tests.support import fuzz  # noqa: E402  (after the variable torchrl reads on import)

RESULTS = REPO / "bench" / "results"
SERVICES = {"buffer": fuzz.BUFFER_SERVICE, "checkpoint": fuzz.CHECKPOINT_SERVICE, "trainer": fuzz.TRAINER_SERVICE}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-rpc", type=int, default=1000, help="mutated requests per RPC (default 1000)")
    parser.add_argument("--per-rpc-s3", type=int, default=200,
                        help="mutated requests per RPC on the S3 store, where each costs ~0.2 s of store round "
                             "trips (default 200)")
    parser.add_argument("--seed", type=int, default=fuzz.DEFAULT_SEED,
                        help=f"the seed every request derives from (default {fuzz.DEFAULT_SEED}, the tests')")
    parser.add_argument("--services", default="buffer,checkpoint,trainer",
                        help="comma-separated: buffer, checkpoint, trainer (default: all three)")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both",
                        help="the checkpoint service's store (default both: file:// and moto's S3)")
    parser.add_argument("--rpc", nargs="*", default=[],
                        help="only these RPCs, as Service/Method or Method (default: every RPC)")
    parser.add_argument("--only", nargs="*", type=int,
                        help="replay only these request indices (-1: the template) instead of 0..per-rpc-1")
    parser.add_argument("--memory-headroom-gib", type=float, default=4.0,
                        help="address space the services may grow by before allocations fail (default 4 GiB)")
    parser.add_argument("--verbose", action="store_true", help="print every request: mutation, status, message")
    parser.add_argument("--out", default=str(RESULTS / "fuzz.json"), help="where the JSON report goes")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace, service) -> list[fuzz.Rpc]:
    rpcs = fuzz.all_rpcs([service])
    if args.rpc:
        rpcs = [r for r in rpcs if r.key in args.rpc or r.name in args.rpc]
    return rpcs


def printer(rpc: fuzz.Rpc):
    def on_call(index: int, mutation: fuzz.Mutation, result: fuzz.CallResult) -> None:
        print(f"  {rpc.key} #{index}: {mutation.description[:160]}\n      -> {result.code} {result.details[:240]!r}"
              f"{' (stream cut)' if result.truncated else ''} [{result.seconds * 1000:.0f} ms]")

    return on_call


def fuzz_world(world: fuzz.World, rpcs: list[fuzz.Rpc], args: argparse.Namespace, log: fuzz.ServerLog,
               label: str = "", count: int | None = None) -> list[fuzz.RpcReport]:
    reports = []
    for rpc in rpcs:
        fuzzer = fuzz.Fuzzer(world, seed=args.seed, server_log=log,
                             on_call=printer(rpc) if args.verbose else None)
        try:
            report = fuzzer.run(rpc, args.per_rpc if count is None else count, only=args.only)
        finally:
            fuzzer.close()
        report.store = label
        print(fuzz.table([report]).splitlines()[1], flush=True)
        reports.append(report)
    return reports


def run_checkpoint(args, rpcs, buffers: fuzz.BufferWorld, log: fuzz.ServerLog, scratch: Path) -> list:
    reports = []
    if args.store in ("file", "both"):
        root = scratch / "store"
        world = fuzz.CheckpointWorld(f"file://{root}", buffers, fuzz.file_listing(root))
        try:
            reports += fuzz_world(world, rpcs, args, log, "file")
        finally:
            world.close()
    if args.store in ("s3", "both"):
        from tests.support.s3 import MotoServer

        moto = MotoServer(scratch)
        saved = {k: os.environ.get(k) for k in moto.env}
        os.environ.update(moto.env)
        try:
            bucket = moto.create_bucket()
            world = fuzz.CheckpointWorld(f"s3://{bucket}/rewind", buffers,
                                         fuzz.s3_listing(moto.client(), bucket, "rewind/"))
            try:
                reports += fuzz_world(world, rpcs, args, log, "s3", args.per_rpc_s3)
            finally:
                world.close()
        finally:
            moto.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return reports


def run(args: argparse.Namespace) -> list[fuzz.RpcReport]:
    names = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise SystemExit(f"--services: unknown {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    reports: list[fuzz.RpcReport] = []
    with fuzz.ServerLog() as log, tempfile.TemporaryDirectory(prefix="rewind-fuzz-") as tmp:
        buffers = fuzz.BufferWorld() if {"buffer", "checkpoint"} & set(names) else None
        try:
            if "buffer" in names:
                reports += fuzz_world(buffers, selected(args, fuzz.BUFFER_SERVICE), args, log)
            if "checkpoint" in names and selected(args, fuzz.CHECKPOINT_SERVICE):
                reports += run_checkpoint(args, selected(args, fuzz.CHECKPOINT_SERVICE), buffers, log, Path(tmp))
            if "trainer" in names and selected(args, fuzz.TRAINER_SERVICE):
                trainer = fuzz.TrainerWorld()
                try:
                    reports += fuzz_world(trainer, selected(args, fuzz.TRAINER_SERVICE), args, log)
                finally:
                    trainer.close()
        finally:
            if buffers is not None:
                buffers.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.CRITICAL)  # the report shows the server's log, once
    missing = fuzz.missing_templates()
    if missing:
        print(f"RPCs without a template (add template_<Method> to their world): {', '.join(missing)}")
    started = time.monotonic()
    with fuzz.memory_cap(int(args.memory_headroom_gib * 2**30)):
        reports = run(args)
    elapsed = time.monotonic() - started
    print()
    print(fuzz.table(reports))
    failed = [r for r in reports if r.failures]
    for report in failed:
        print()
        print(report.explain(limit=50))
        for failure, _ in report.distinct()[:10]:
            if failure.log:
                print(f"    server log of request {failure.index}:")
                print("      " + failure.log[0][-1500:].replace("\n", "\n      "))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "seed": args.seed, "per_rpc": args.per_rpc, "per_rpc_s3": args.per_rpc_s3, "seconds": round(elapsed, 1),
        "missing_templates": missing, "failures": sum(len(r.failures) for r in reports),
        "rpcs": [r.to_json() for r in reports]}, indent=2) + "\n")
    total = sum(r.calls for r in reports)
    print(f"\n{total} requests in {elapsed:.0f} s; {sum(len(r.failures) for r in reports)} failures "
          f"in {len(failed)} of {len(reports)} RPCs; report: {out}")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
