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
  cut      the trainer's stall per cut of 4 shards holding 1M transitions each (--cut-transitions): the
           trainer's Checkpointer capturing every shard in parallel and copying a TD-MPC2 agent's state
           (model size 1), one episode added to the run between cuts, each cut committed to a file store
           before the next (as the trainer does); worst and median of --cuts cuts (target: worst <= 50 ms)

Targets on a lent 16-core machine: >= 3.2 x aggregate insert with 4 shards (Reverb: 2.9 x); the learner's
stream >= 555 batches/s. On this 2-core machine the shards, writers and the learner share two cores, so
the scaling figures say little there; they are published as measured.

    python -m bench.shards [--rounds 3] [--episodes 100] [--batches 200] [--shards 1,2,4] [--cuts 20]
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


def cut_stalls(cuts: int, transitions: int, shards: int = 4) -> list[float]:
    """The trainer's blocking milliseconds of each of `cuts` cuts of `shards` shards of `transitions` each."""
    import tempfile

    from rewind import CheckpointClient
    from rewind_trainer.agent import TDMPC2
    from rewind_trainer.checkpointer import Checkpointer, Cut
    from rewind_trainer.connections import parts_of
    from rewind_trainer.hparams import AgentConfig

    data = make_episodes()
    agent = TDMPC2(AgentConfig(obs_dim=data[0]["obs"].shape[1], action_dim=data[0]["action"].shape[1],
                               episode_length=STEPS, model_size="1"), seed=1)
    servers = start_shards(shards, transitions + cuts * STEPS)
    with tempfile.TemporaryDirectory() as store:
        ckpt_service = LocalService(["--log-level", "WARNING", "ckpt", "serve", "--store", f"file://{store}"])
        try:
            with ShardedBufferClient([s.address for s in servers], writer="bench", timeout=600) as sharded, \
                    CheckpointClient(ckpt_service.address, timeout=600) as ckpt:
                clients = [shard.client for shard in sharded.shards]
                for client in clients:  # each shard full, loaded directly (routing is not what is measured)
                    for start in range(0, transitions // STEPS, len(data)):
                        client.load(data[: min(len(data), transitions // STEPS - start)])
                test_buffer = clients[0].using("test_buffer")
                test_buffer.reset(buffer_size=10 * STEPS, batch_size=BATCH, horizon=HORIZON, min_history=0)
                checkpointer = Checkpointer(ckpt, "bench", "cut", parts_of(clients, test_buffer, transitions * shards),
                                            {"keep_last": 1}, Cut(routing_seed=0, generation=1), sharded)
                stalls = []
                for i in range(cuts):
                    sharded.add(data[i % len(data)])
                    job = checkpointer.start(i + 1, i, lambda: {"agent": agent.state_dict()}, {}, {}, {}, {})
                    job.done.result(timeout=1800)
                    stalls.append(job.blocking_ms)
                    print(f"  cut {i + 1}/{cuts}: trainer blocked {job.blocking_ms:.1f} ms", flush=True)
                test_buffer.close()
                return stalls
        finally:
            ckpt_service.terminate()
            for server in servers:
                server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=100, help="episodes each writer loads")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--cuts", type=int, default=20, help="cuts of 4 full shards (0: skip)")
    parser.add_argument("--cut-transitions", type=int, default=1_000_000, help="transitions each shard holds")
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

    if args.cuts:
        print(f"cuts: 4 shards x {args.cut_transitions:,} transitions", flush=True)
        stalls = cut_stalls(args.cuts, args.cut_transitions)
        results["cut/trainer stall (ms)"] = stalls
        print(f"  worst {max(stalls):.1f} ms, median {statistics.median(stalls):.1f} ms of {len(stalls)} cuts")

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
    if "cut/trainer stall (ms)" in results:
        ratios["cut: worst trainer stall of the cuts, ms (target <= 50)"] = max(results["cut/trainer stall (ms)"])
        print(f"  {'cut: worst trainer stall (ms, target <= 50)':60s} {max(results['cut/trainer stall (ms)']):10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "ratios": ratios, "raw": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
