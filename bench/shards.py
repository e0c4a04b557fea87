"""Sharded replay benchmark: 1, 2 and 4 buffer services behind one ShardedBufferClient, side by side in one
run, in interleaved rounds (this machine is noisy; medians are reported):

  data     episodes of 500 steps, obs 64, action 8, float32 (bench.buffer's)
  batches  256 sequences x 4 steps (horizon 3), TD-MPC2 layout

  insert   aggregate load() throughput into N shards: one writer process per shard (each a
           ShardedBufferClient with its own writer id, so routing spreads every writer's episodes),
           episodes/s summed over the writers
  learner  batches/s of ShardedBufferClient.batches(prefetch=8) over N shards
  1 shard  the sharded client on one shard against BufferClient on the same service
           (target >= 0.9 x: the sharded client's overhead)
  limiter  a writer against a learner on a shard whose rate limiter holds 1 sequence per transition:
           the seconds each side spent held back

Targets on a lent 16-core machine: >= 3.2 x aggregate insert with 4 shards (Reverb: 2.9 x); the learner's
stream >= 555 batches/s. On this 2-core machine the shards, writers and the learner share two cores, so
the scaling figures say little there; they are published as measured.

    python -m bench.shards [--rounds 3] [--episodes 100] [--batches 200] [--shards 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

from bench.buffer import BATCH, HORIZON, STEPS, make_episodes
from rewind import BufferClient, ShardedBufferClient
from rewind_runtime.local import LocalService


def start_shards(count: int, capacity: int, *extra: str) -> list[LocalService]:
    return [LocalService(["--log-level", "WARNING", "buffer", "serve", "--buffer-size", str(capacity),
                          "--batch-size", str(BATCH), "--horizon", str(HORIZON), "--min-history", "0",
                          "--storage-device", "cpu", *extra]) for _ in range(count)]


def _writer(addresses: list[str], writer: str, episodes: int, ready, go, done) -> None:
    data = make_episodes()[:episodes]
    with ShardedBufferClient(addresses, writer=writer) as client:
        ready.put(writer)
        go.wait()
        start = time.perf_counter()
        client.load(data)
        done.put(episodes / (time.perf_counter() - start))


def aggregate_insert(addresses: list[str], writers: int, episodes: int) -> float:
    """Episodes/s of `writers` writer processes loading at once, summed."""
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(addresses, f"w{i}", episodes, ready, go, done)) for i in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    rates = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return sum(rates)


def stream_rate(client, batches: int) -> float:
    with client.batches(prefetch=8, num_batches=batches) as stream:
        next(stream)
        start = time.perf_counter()
        n = sum(1 for _ in stream)
    return n / (time.perf_counter() - start)


def limiter_run(episodes: int, batches: int) -> dict[str, float]:
    """A writer and a learner on one limited shard: the seconds each side waited."""
    [shard] = start_shards(1, episodes * STEPS, "--samples-per-insert", "1", "--min-size-to-sample", str(10 * STEPS),
                           "--error-buffer", str(4 * STEPS + 2 * BATCH), "--max-episode-length", str(STEPS))
    try:
        data = make_episodes()[:episodes]
        with BufferClient(shard.address, timeout=120) as writer, BufferClient(shard.address, timeout=120) as learner:
            import threading

            thread = threading.Thread(target=lambda: [writer.add(e) for e in data], daemon=True)
            thread.start()
            drawn = 0
            while drawn < batches and (thread.is_alive() or learner.stats().rate_limiter.can_sample):
                learner.sample()
                drawn += 1
            thread.join(120)
            state = learner.stats().rate_limiter
        return {"insert blocked s": state.inserts_blocked_seconds, "sample blocked s": state.samples_blocked_seconds,
                "inserts": state.inserts, "samples": state.samples}
    finally:
        shard.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=100, help="episodes each writer loads")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--out", default="bench/results/shards.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.shards.split(",")]
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name:48s} {value:10.1f}", flush=True)

    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for n in counts:
            shards = start_shards(n, 4 * args.episodes * STEPS * max(counts) // n)
            addresses = [s.address for s in shards]
            try:
                rate = aggregate_insert(addresses, n, args.episodes)
                record(f"insert/{n} shard(s), {n} writer(s) (episodes/s)", rate)
                with ShardedBufferClient(addresses, writer="learner") as sharded:
                    record(f"learner/{n} shard(s) (batches/s)", stream_rate(sharded, args.batches))
                if n == 1:
                    with BufferClient(addresses[0]) as plain:
                        record("learner/BufferClient on the same shard (batches/s)", stream_rate(plain, args.batches))
            finally:
                for s in shards:
                    s.terminate()
        for name, value in limiter_run(args.episodes, args.batches).items():
            record(f"limiter/{name}", value)

    med = {k: statistics.median(v) for k, v in results.items()}
    base = med.get("insert/1 shard(s), 1 writer(s) (episodes/s)")
    ratios = {f"insert: {n} shards / 1 shard (target >= 3.2 at 4 on 16 cores)":
              med[f"insert/{n} shard(s), {n} writer(s) (episodes/s)"] / base for n in counts if base and n > 1}
    if "learner/BufferClient on the same shard (batches/s)" in med:
        ratios["learner: sharded client on 1 shard / BufferClient (target >= 0.9)"] = (
            med["learner/1 shard(s) (batches/s)"] / med["learner/BufferClient on the same shard (batches/s)"])
    print(f"\nsharded replay benchmark ({args.rounds} rounds, medians)")
    for name, value in med.items():
        print(f"  {name:60s} {value:10.1f}")
    for name, value in ratios.items():
        print(f"  {name:60s} {value:10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "ratios": ratios, "raw": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
