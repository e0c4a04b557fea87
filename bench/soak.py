"""Buffer-service soak: memory and latency under sustained mixed load.

Starts `rewind buffer serve` in a process of its own and, for --duration-s,
runs against it at once:

  writers    --writers threads, each adding whole episodes (AddEpisode) as fast
             as the service takes them: --steps steps of obs --obs-dim and
             action --action-dim, float32. --buffer-size is small enough that
             the buffer fills within seconds, then wraps and evicts for the
             rest of the run.
  samplers   --samplers threads, each opening a SampleStream (prefetch 4),
             reading --stream-batches batches, cancelling it, then making
             --unary-samples unary Sample calls; and again.
  snapshots  every --snapshot-every-s a Capture, then the capture streamed as
             a Snapshot into a sink that only counts its bytes.

Meanwhile it reads the service's VmRSS (and RssAnon, RssFile, thread count)
from /proc/<pid>/status every --rss-every-s. After --warmup-s (the buffer full,
every pool grown to its working size), RSS must stay within --tolerance-pct
of its value at the end of the warm-up (the median of its last 10 s of
readings): growth = (max after warm-up / RSS at the end of warm-up - 1) x 100,
over the readings taken between snapshots. A snapshot holds a copy of the
storage while it streams (Capture copies it), by design: readings taken from
a Capture to the end of its stream are reported apart, as the peak.

Reports per operation: count, rate, errors by status, p50/p99 latency (a
stream's "batch" latency is the wait for each next batch; "first batch" is
from opening a stream to its first batch), and the RSS trace. Writes
bench/results/soak.json and the trace as a plot beside it (soak.png).

    python -m bench.soak                                   # 10 minutes, 8 + 8 threads, snapshots every 20 s
    python -m bench.soak --duration-s 120 --warmup-s 30    # a short check
    python -m bench.soak --env MALLOC_ARENA_MAX=2          # the service with a malloc setting
    python -m bench.soak --service-arg=--workers=64 --out /tmp/soak.json

The client threads run in one Python process (one GIL) on the same machine as
the service (and whatever else runs there): the rates are the load this
generator makes, not the service's ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from rewind import BufferClient
from rewind.errors import RewindError
from rewind_runtime.local import LocalService

MiB = 2**20
BUFFER = "buffer"
STREAM_PREFETCH = 4
BASELINE_S = 10.0  # the RSS "at the end of warm-up" is the median of its last 10 s


# -- the service's memory ------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM (bytes) and Threads of a process, from /proc/<pid>/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"}
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                parts = value.split()
                out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_summary(trace: list[dict], warmup_s: float, tolerance_pct: float) -> dict:
    """RSS at the end of warm-up, its max and end after it, growth in % (between snapshots, and overall), slope."""
    after = [p for p in trace if p["t"] >= warmup_s]
    between = [p for p in after if not p["snapshot"]]
    if not between:
        return {"error": "no RSS reading after the warm-up between snapshots; run longer than --warmup-s"}
    # The median of the warm-up's last BASELINE_S of readings taken between snapshots.
    last = [p["rss_mb"] for p in trace if warmup_s - BASELINE_S <= p["t"] < warmup_s and not p["snapshot"]]
    base = statistics.median(last or [between[0]["rss_mb"]])
    level = max(p["rss_mb"] for p in between)
    growth = (level / base - 1) * 100
    peak = max(p["rss_mb"] for p in after)
    # Least squares over the post-warm-up samples: a slow leak shows as a steady slope.
    ts, rs = [p["t"] for p in between], [p["rss_mb"] for p in between]
    slope = 0.0
    if len(ts) > 1 and max(ts) > min(ts):
        mt, mr = statistics.fmean(ts), statistics.fmean(rs)
        slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rs, strict=True)) / sum((t - mt) ** 2 for t in ts) * 60
    return {
        "rss_start_mb": trace[0]["rss_mb"],
        "rss_warmup_end_mb": base,
        "rss_max_after_warmup_mb": level,
        "rss_end_mb": between[-1]["rss_mb"],
        "rss_min_after_warmup_mb": min(p["rss_mb"] for p in between),
        "growth_after_warmup_pct": growth,
        "rss_peak_with_snapshot_mb": peak,
        "peak_growth_with_snapshot_pct": (peak / base - 1) * 100,
        "readings_after_warmup": len(after),
        "readings_with_snapshot_in_flight": len(after) - len(between),
        "slope_after_warmup_mb_per_min": slope,
        "threads_warmup_end": after[0]["threads"],
        "threads_max_after_warmup": max(p["threads"] for p in after),
        "tolerance_pct": tolerance_pct,
        "passed": growth <= tolerance_pct,
    }


# -- the load ------------------------------------------------------------------


class Recorder:
    """Latencies and errors per operation, shared by every load thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        self.first_error: dict[str, str] = {}

    def ok(self, op: str, seconds: float) -> None:
        with self.lock:
            self.latencies[op].append(seconds)

    def failed(self, op: str, exc: BaseException) -> None:
        status = exc.code.name if isinstance(exc, RewindError) else type(exc).__name__
        with self.lock:
            self.errors[op][status] += 1
            self.first_error.setdefault(f"{op}/{status}", str(exc)[:300])

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {op: len(v) for op, v in self.latencies.items()}

    def error_total(self) -> int:
        with self.lock:
            return sum(sum(c.values()) for c in self.errors.values())


def make_episodes(n: int, steps: int, obs_dim: int, action_dim: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"obs": torch.randn(steps, obs_dim, generator=g), "action": torch.randn(steps, action_dim, generator=g),
             "reward": torch.randn(steps, generator=g), "done": torch.zeros(steps)} for _ in range(n)]


def writer(address: str, index: int, args, stop: threading.Event, rec: Recorder) -> None:
    client = BufferClient(address, BUFFER)
    episodes = make_episodes(4, args.steps, args.obs_dim, args.action_dim, seed=1000 + index)
    i = 0
    try:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.add(episodes[i % len(episodes)])
                rec.ok("add", time.perf_counter() - start)
            except Exception as exc:  # counted by status; the soak goes on
                rec.failed("add", exc)
                stop.wait(0.1)
            i += 1
    finally:
        client.close()


def sampler(address: str, index: int, args, stop: threading.Event, rec: Recorder) -> None:
    client = BufferClient(address, BUFFER)
    try:
        while not stop.is_set():
            if args.stream_batches:
                opened = time.perf_counter()
                try:
                    with client.batches(prefetch=STREAM_PREFETCH) as stream:  # cancelled on leaving the block
                        last = opened
                        for n, _ in enumerate(stream, 1):
                            now = time.perf_counter()
                            rec.ok("stream first batch" if n == 1 else "stream batch", now - last)
                            last = now
                            if n >= args.stream_batches or stop.is_set():
                                break
                except Exception as exc:
                    rec.failed("stream batch", exc)
                    stop.wait(0.1)
            for _ in range(args.unary_samples):
                if stop.is_set():
                    break
                start = time.perf_counter()
                try:
                    client.sample()
                    rec.ok("sample", time.perf_counter() - start)
                except Exception as exc:
                    rec.failed("sample", exc)
                    stop.wait(0.1)
    finally:
        client.close()


class SnapshotWindows:
    """When a capture's copy may be alive in the service: from Capture to the end of its stream, plus a margin."""

    MARGIN_S = 0.5  # the service frees the copy as its stream ends, which the client sees a moment before

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: float | None = None
        self._closed: list[tuple[float, float]] = []

    def begin(self) -> None:
        with self._lock:
            self._open = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._closed.append((self._open, time.monotonic()))
            self._open = None

    def in_flight(self, since: float) -> bool:
        """Whether a copy may have been alive at any time from `since` to now."""
        with self._lock:
            return self._open is not None or any(end + self.MARGIN_S >= since for _, end in self._closed[-2:])


def snapshotter(address: str, args, stop: threading.Event, rec: Recorder, sizes: list[int],
                windows: SnapshotWindows) -> None:
    client = BufferClient(address, BUFFER)
    try:
        while not stop.wait(args.snapshot_every_s):
            windows.begin()
            start = time.perf_counter()
            try:
                capture = client.capture()
                rec.ok("capture", time.perf_counter() - start)
                start = time.perf_counter()
                size = sum(len(r.chunk) for r in client.snapshot_stream(capture_id=capture.capture_id))
                rec.ok("snapshot stream", time.perf_counter() - start)
                sizes.append(size)
            except Exception as exc:
                rec.failed("capture+snapshot", exc)
            finally:
                windows.end()
    finally:
        client.close()


# -- the run -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def plot(trace: list[dict], summary: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t"] for p in trace]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [p["rss_mb"] for p in trace], label="VmRSS")
    ax.plot(t, [p["rss_anon_mb"] for p in trace], label="RssAnon", alpha=0.7)
    during = [p for p in trace if p["snapshot"]]
    if during:
        ax.scatter([p["t"] for p in during], [p["rss_mb"] for p in during], s=10, color="red", zorder=3,
                   label="read with a snapshot in flight")
    ax.axvline(args.warmup_s, color="grey", linestyle="--", label="end of warm-up")
    if "rss_warmup_end_mb" in summary:
        base = summary["rss_warmup_end_mb"]
        ax.axhspan(base, base * (1 + args.tolerance_pct / 100), color="green", alpha=0.12,
                   label=f"+{args.tolerance_pct:g}% of RSS at warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    verdict = "" if "passed" not in summary else (
        f": growth after warm-up {summary['growth_after_warmup_pct']:+.1f}% between snapshots "
        f"({'within' if summary['passed'] else 'OVER'} {args.tolerance_pct:g}%)")
    ax.set_title(f"buffer service RSS, {args.writers} writers + {args.samplers} samplers + snapshots{verdict}",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0, help="length of the load, seconds (default 600)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds before the RSS baseline is taken (default 60)")
    parser.add_argument("--writers", type=int, default=8, help="AddEpisode threads (default 8)")
    parser.add_argument("--samplers", type=int, default=8, help="sampling threads (default 8)")
    parser.add_argument("--snapshot-every-s", type=float, default=20.0,
                        help="seconds between Capture+Snapshot (default 20; 0: none)")
    parser.add_argument("--buffer-size", type=int, default=100_000,
                        help="capacity in transitions (default 100,000: 30 MB of these episodes, full in seconds)")
    parser.add_argument("--steps", type=int, default=500, help="steps per episode (default 500)")
    parser.add_argument("--obs-dim", type=int, default=64, help="obs size, float32 (default 64)")
    parser.add_argument("--action-dim", type=int, default=8, help="action size, float32 (default 8)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per batch (default 256)")
    parser.add_argument("--horizon", type=int, default=3, help="batches hold horizon+1 steps (default 3)")
    parser.add_argument("--stream-batches", type=int, default=50,
                        help="batches each SampleStream reads before it is cancelled (default 50; 0: no streams)")
    parser.add_argument("--unary-samples", type=int, default=5,
                        help="unary Sample calls after each stream (default 5)")
    parser.add_argument("--workers", type=int, default=32,
                        help="the service's gRPC workers (default 32: max_streams 16 leaves room for 8 sampler "
                             "streams and a snapshot)")
    parser.add_argument("--rss-every-s", type=float, default=2.0, help="seconds between RSS readings (default 2)")
    parser.add_argument("--tolerance-pct", type=float, default=10.0,
                        help="allowed RSS growth after warm-up, %% (default 10)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the service (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--service-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `rewind buffer serve` (repeatable), e.g. --service-arg=--seed=3")
    parser.add_argument("--out", default="bench/results/soak.json",
                        help="JSON report; the plot goes beside it (default bench/results/soak.json)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the RSS plot beside the JSON")
    args = parser.parse_args(argv)
    if args.duration_s <= args.warmup_s:
        parser.error("--duration-s must be longer than --warmup-s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    service_args = ["--log-level", "WARNING", "buffer", "serve", "--buffers", BUFFER,
                    "--buffer-size", str(args.buffer_size), "--batch-size", str(args.batch_size),
                    "--horizon", str(args.horizon), "--min-history", "0", "--storage-device", "cpu",
                    "--workers", str(args.workers), *args.service_arg]
    step_bytes = (args.obs_dim + args.action_dim + 2) * 4 + 8
    print(f"soak: {args.duration_s:.0f} s ({args.warmup_s:.0f} s warm-up), {args.writers} writers, "
          f"{args.samplers} samplers, snapshot every {args.snapshot_every_s:g} s; buffer of {args.buffer_size:,} "
          f"transitions ({args.buffer_size * step_bytes / MiB:.1f} MiB), episodes of {args.steps} steps"
          + (f"; service env {env}" if env else ""), flush=True)
    load_start = os.getloadavg()
    service = LocalService(service_args, env=env)
    pid = service.proc.pid
    rec, stop, snapshot_sizes, trace, windows = Recorder(), threading.Event(), [], [], SnapshotWindows()
    try:
        # Enough for the first batch, so that samplers start sampling at t=0.
        seed_client = BufferClient(service.address, BUFFER)
        seed_client.load(make_episodes(2, args.steps, args.obs_dim, args.action_dim, seed=0))
        threads = [threading.Thread(target=writer, args=(service.address, i, args, stop, rec), daemon=True)
                   for i in range(args.writers)]
        threads += [threading.Thread(target=sampler, args=(service.address, i, args, stop, rec), daemon=True)
                    for i in range(args.samplers)]
        if args.snapshot_every_s > 0:
            threads.append(threading.Thread(target=snapshotter, args=(service.address, args, stop, rec,
                                                                      snapshot_sizes, windows), daemon=True))
        cpu_start = cpu_seconds(pid)
        start = time.monotonic()
        for thread in threads:
            thread.start()
        next_print = 0.0
        while True:
            read_at = time.monotonic()
            t = read_at - start
            status = proc_status(pid)
            trace.append({"t": round(t, 2), "rss_mb": status["VmRSS"] / MiB, "rss_anon_mb": status["RssAnon"] / MiB,
                          "rss_file_mb": status["RssFile"] / MiB, "threads": status["Threads"],
                          "ops": sum(rec.counts().values()), "snapshot": windows.in_flight(read_at)})
            if t >= next_print or t >= args.duration_s:
                counts = rec.counts()
                print(f"  {t:6.0f}s  rss {status['VmRSS'] / MiB:7.1f} MiB  threads {status['Threads']:3d}  "
                      f"adds {counts.get('add', 0):7d}  batches {counts.get('stream batch', 0):8d}  "
                      f"samples {counts.get('sample', 0):6d}  snapshots {counts.get('snapshot stream', 0):3d}  "
                      f"errors {rec.error_total()}", flush=True)
                next_print = t + max(10.0, args.duration_s / 60)
            if t >= args.duration_s:
                break
            if service.proc.poll() is not None:
                raise SystemExit(f"the buffer service exited with code {service.proc.returncode} mid-soak")
            time.sleep(min(args.rss_every_s, max(0.0, args.duration_s - t)))  # a sampling period, not a sync
        stop.set()
        cpu = cpu_seconds(pid) - cpu_start
        for thread in threads:
            thread.join(timeout=60)
        stats = seed_client.stats()
        seed_client.close()
        final = proc_status(pid)
    finally:
        stop.set()
        service.terminate()
    load_end = os.getloadavg()

    summary = memory_summary(trace, args.warmup_s, args.tolerance_pct)
    ops = {}
    for op, values in sorted(rec.latencies.items()):
        ops[op] = {"count": len(values), "per_s": len(values) / args.duration_s,
                   "p50_ms": percentile(values, 50) * 1e3, "p99_ms": percentile(values, 99) * 1e3,
                   "max_ms": max(values) * 1e3}
    for op in rec.errors:
        ops.setdefault(op, {"count": 0})
    for op, counter in rec.errors.items():
        ops[op]["errors"] = dict(counter)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "service_command": ["rewind", *service_args],
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
                    "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "operations": ops,
        "errors_total": rec.error_total(),
        "service_cpu_s": cpu,
        "service_cpu_ms_per_op": cpu * 1e3 / max(1, sum(r["count"] for r in ops.values())),
        "first_errors": rec.first_error,
        "buffer": {"episodes_added": stats.episodes_added, "episodes_evicted": stats.episodes_evicted,
                   "transitions": stats.transitions, "batches_sampled": stats.batches_sampled,
                   "storage_mb": stats.bytes / MiB,
                   "wraps": stats.episodes_added * args.steps / args.buffer_size},
        "snapshots": {"count": len(snapshot_sizes), "mean_mb": statistics.fmean(snapshot_sizes) / MiB
                      if snapshot_sizes else 0.0},
        "memory": {**summary, "vm_hwm_mb": final["VmHWM"] / MiB},
        "rss_trace": trace,
    }

    print(f"\nbuffer-service soak, {args.duration_s:.0f} s, {args.writers} writers + {args.samplers} samplers + "
          f"snapshot every {args.snapshot_every_s:g} s ({os.cpu_count()} CPUs, load average "
          f"{load_start[0]:.1f} -> {load_end[0]:.1f})")
    print(f"  {'operation':<18} {'count':>9} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors")
    for op, r in ops.items():
        errors = ", ".join(f"{k} {v}" for k, v in r.get("errors", {}).items()) or "0"
        if r["count"]:
            print(f"  {op:<18} {r['count']:>9,} {r['per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['max_ms']:>8.0f}  {errors}")
        else:
            print(f"  {op:<18} {0:>9} {'':>8} {'':>8} {'':>8} {'':>8}  {errors}")
    print(f"  service CPU: {cpu:.0f} s over {args.duration_s:.0f} s ({cpu / args.duration_s:.2f} cores), "
          f"{report['service_cpu_ms_per_op']:.2f} ms per operation")
    b = report["buffer"]
    print(f"  buffer: {b['episodes_added']:,} episodes added, {b['episodes_evicted']:,} evicted "
          f"({b['wraps']:.0f} x its capacity), {b['storage_mb']:.1f} MiB storage; "
          f"{len(snapshot_sizes)} snapshots of {report['snapshots']['mean_mb']:.1f} MiB")
    m = report["memory"]
    if "error" in m:
        print(f"  memory: {m['error']}")
    else:
        print(f"  RSS between snapshots: start {m['rss_start_mb']:.0f} MiB, end of warm-up ({args.warmup_s:.0f} s) "
              f"{m['rss_warmup_end_mb']:.0f} MiB, max after {m['rss_max_after_warmup_mb']:.0f} MiB, end "
              f"{m['rss_end_mb']:.0f} MiB; growth after warm-up {m['growth_after_warmup_pct']:+.1f}% "
              f"(slope {m['slope_after_warmup_mb_per_min']:+.2f} MiB/min); threads {m['threads_warmup_end']} -> "
              f"max {m['threads_max_after_warmup']}")
        print(f"  RSS with a snapshot in flight ({m['readings_with_snapshot_in_flight']} of "
              f"{m['readings_after_warmup']} readings): peak {m['rss_peak_with_snapshot_mb']:.0f} MiB, "
              f"{m['peak_growth_with_snapshot_pct']:+.1f}% (its copy of the storage)")
        print(f"  target: growth after warm-up within {args.tolerance_pct:g}%: "
              f"{'met' if m['passed'] else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", end="")
    if not args.no_plot:
        png = out.with_suffix(".png")
        plot(trace, summary, args, png)
        print(f" and {png}", end="")
    print()
    return 0 if m.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
