"""Several trainings on one machine: steps/s per run with 1, 2 and 4 runs at once.

Each run is `rewind train --local-services` (its own buffer and checkpoint
services, which share the run's CPU limits) in a temporary folder of its own:
Pendulum-v1, the tiny model, MPPI acting, --seed-steps 200, a distinct
--run-id, --no-progress, no evaluation and no periodic checkpoints (neither
is what is measured), and no --torch-threads: each run chooses its thread
count as a user's run would, from the CPUs it may use.

Modes, each with every count of runs:
  none     no limit: the runs share every core of the machine.
  quota    the runs in one cgroup v1 group with a CPU quota of 1 CPU
           (cpu.cfs_quota_us = cpu.cfs_period_us = 100000), which the
           benchmark creates under the cpu controller's mount and removes at
           the end; each run enters it before it starts (needs root).
  taskset  the runs pinned to CPU 0 with `taskset -c 0`.
  sweep    each run pinned to its own share of the CPUs, as `rewind sweep`
           starts them (with 4 runs on 2 CPUs, two share each CPU).

How steps/s is measured: a run's metrics.csv has a row per episode only
(200 steps, which the tiny model's MPPI takes tens of seconds to act), too
coarse for a window of --seconds. So each run serves its status
(`--port 0 --port-file`), and the benchmark reads `step` from every run's
status once a second. The window opens when every run of the case is in the
"training" phase (the random seed steps and the burst of updates that ends
them are over) and closes --seconds later; a run's rate is the steps it
made in the window over the window's wall-clock time, all runs measured
over the same window. Start-up, seeding and the stop are not measured.

Targets:
  two runs at once: each >= 0.45 x one run alone (same mode);
  N runs at once: the total never below one run alone (same mode);
  under the 1-CPU quota: a run >= 0.9 x a run pinned with taskset -c 0
  (same number of runs).

Writes bench/results/concurrency.json.

    python -m bench.concurrency [--seconds 120] [--counts 1,2,4] [--modes none,quota,taskset]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rewind import TrainerClient
from rewind_runtime.threads import affinity_cpus, cgroup_mounts, cpu_shares

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("none", "quota", "taskset", "sweep")
SEED_STEPS = 200
POLL_S = 1.0
STARTUP_TIMEOUT_S = 900.0   # start-up, seeding and the update burst, with 4 runs sharing one CPU
TRAIN = ["train", "--local-services", "--task", "Pendulum-v1", "--model-size", "tiny", "--mpc", "--seed-steps",
         str(SEED_STEPS), "--steps", "1000000", "--eval-episodes", "0", "--checkpoint-interval-episodes", "0",
         "--buffer-size", "100000", "--no-progress", "--port", "0"]


class Run:
    """One `rewind train --local-services` in `folder`, started behind `prefix` (taskset, the cgroup wrapper)."""

    def __init__(self, folder: Path, run_id: str, prefix: list[str]) -> None:
        self.folder, self.run_id = folder, run_id
        self.port_file = folder / "port"
        self.log_path = folder / "train.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        # No REWIND_* variable of the caller's shell may change what is measured (the thread count above all).
        env = {k: v for k, v in os.environ.items() if not k.startswith("REWIND_")}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "rewind_cli", *TRAIN, "--run-id", run_id,
                                      "--port-file", str(self.port_file)],
                                     cwd=folder, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client: TrainerClient | None = None

    def status(self):
        """The trainer's status, or None until its service is up."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{self.run_id} exited with {self.proc.returncode}:\n{tail}")
        if self.client is None:
            text = self.port_file.read_text().strip() if self.port_file.exists() else ""
            if not text.isdigit():  # not written yet (or half written)
                return None
            self.client = TrainerClient(f"127.0.0.1:{text}", timeout=10)
        return self.client.status()

    def terminate(self) -> None:
        """SIGTERM: the run checkpoints, stops its local services and exits."""
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Until the run has exited (SIGKILL after a minute)."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def stop_all(runs: list[Run]) -> None:
    """Signal every run first, then wait: they stop side by side."""
    for run in runs:
        run.terminate()
    for run in runs:
        run.wait()


@contextmanager
def quota_group():
    """A cgroup v1 group with a quota of 1 CPU under the cpu controller's mount; yields its cgroup.procs."""
    mounts = [m for m in cgroup_mounts() if m.version == 1]
    if not mounts or os.geteuid() != 0:
        raise SystemExit("mode quota needs root and the cgroup v1 cpu controller; leave it out with --modes")
    group = Path(mounts[0].point) / f"rewind-bench-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
        yield group / "cgroup.procs"
    finally:
        _remove_group(group)


def _remove_group(group: Path) -> None:
    """rmdir the group once the last process in it has gone (exited processes leave it shortly after)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                print(f"could not remove {group}: remove it with rmdir once its processes are gone", file=sys.stderr)
                return
            time.sleep(0.5)


def prefix(mode: str, procs: Path | None, index: int, count: int) -> list[str]:
    """What the command of run `index` of `count` starts with in `mode`."""
    if mode == "taskset":
        return ["taskset", "-c", "0"]
    if mode == "sweep":
        return ["taskset", "-c", ",".join(map(str, cpu_shares(affinity_cpus(), count)[index]))]
    if mode == "quota":
        # The shell enters the group, then becomes the trainer: the trainer and its services start inside.
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs)]
    return []


def wait_for_training(runs: list[Run]) -> None:
    """Until every run is past its seed steps and the update burst (phase "training")."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        statuses = [run.status() for run in runs]
        if all(s is not None and s.phase == "training" for s in statuses):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the runs were not all training after {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def measure(runs: list[Run], seconds: float) -> tuple[list[float], list[dict]]:
    """Steps/s of each run over one window of `seconds`, and each run's thread choice."""
    wait_for_training(runs)
    first = last = [run.status() for run in runs]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(min(POLL_S, max(0.0, seconds - (time.monotonic() - started))))
        last = [run.status() for run in runs]  # also notices a run that died
    elapsed = time.monotonic() - started
    rates = [(b.step - a.step) / elapsed for a, b in zip(first, last, strict=True)]
    threads = [{"run_id": s.run_id, "threads": s.torch_threads, "reason": s.torch_threads_reason} for s in first]
    return rates, threads


def run_case(mode: str, count: int, seconds: float, procs: Path | None) -> dict:
    """`count` runs at once in `mode`; their rates over a common window."""
    with tempfile.TemporaryDirectory(prefix=f"rewind-bench-{mode}-{count}-") as tmp:
        runs: list[Run] = []
        try:
            for i in range(count):
                folder = Path(tmp) / f"run{i}"
                folder.mkdir()
                runs.append(Run(folder, f"bench-{mode}-{count}-{i}", prefix(mode, procs, i, count)))
            rates, threads = measure(runs, seconds)
        finally:
            stop_all(runs)
    return {"mode": mode, "runs": count, "steps_per_s": rates, "total_steps_per_s": sum(rates),
            "torch_threads": threads}


def checks(cases: list[dict]) -> list[dict]:
    """The targets, for every pair of cases the run produced."""
    by = {(c["mode"], c["runs"]): c for c in cases}
    out = []
    for (mode, count), case in by.items():
        alone = by.get((mode, 1))
        if alone is None or count == 1:
            continue
        one = alone["steps_per_s"][0]
        if count == 2:
            worst = min(case["steps_per_s"]) / one
            out.append({"check": f"{mode}: 2 at once, each vs one alone", "ratio": worst, "target": 0.45})
        out.append({"check": f"{mode}: total of {count} at once vs one alone", "ratio": case["total_steps_per_s"]
                    / one, "target": 1.0})
    for (mode, count), case in by.items():
        pinned = by.get(("taskset", count))
        if mode == "quota" and pinned is not None:
            ratio = case["total_steps_per_s"] / pinned["total_steps_per_s"]  # the same count: the mean per run
            out.append({"check": f"quota vs taskset -c 0, {count} run(s): mean per run", "ratio": ratio,
                        "target": 0.9})
    for c in out:
        c["met"] = c["ratio"] >= c["target"]
    return out


def print_report(cases: list[dict], targets: list[dict]) -> None:
    print(f"{'mode':<8} {'runs':>4}  {'steps/s per run':<32} {'total':>7}  threads (first run)")
    for c in cases:
        per_run = " ".join(f"{r:.2f}" for r in c["steps_per_s"])
        t = c["torch_threads"][0]
        print(f"{c['mode']:<8} {c['runs']:>4}  {per_run:<32} {c['total_steps_per_s']:>7.2f}  "
              f"{t['threads']} ({t['reason']})")
    for t in targets:
        print(f"{t['check']}: {t['ratio']:.2f} (target >= {t['target']}: {'met' if t['met'] else 'NOT met'})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="length of each case's measuring window, once all its runs train (default 120)")
    parser.add_argument("--counts", default="1,2,4", help="numbers of runs at once, comma-separated (default 1,2,4)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)} (default: all)")
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.counts.split(",")]
    args.modes = args.modes.split(",")
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    if "taskset" in args.modes and shutil.which("taskset") is None:
        parser.error("--modes: taskset needs the taskset command (util-linux)")
    if min(args.counts) < 1 or args.seconds <= 0:
        parser.error("--counts must be positive integers and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = []
    with ExitStack() as stack:
        procs = stack.enter_context(quota_group()) if "quota" in args.modes else None
        for mode in args.modes:
            for count in args.counts:
                cases.append(run_case(mode, count, args.seconds, procs))
                c = cases[-1]
                print(f"{mode} x{count}: " + " ".join(f"{r:.2f}" for r in c["steps_per_s"]) + " steps/s", flush=True)
    targets = checks(cases)
    print_report(cases, targets)
    report = {"seconds": args.seconds, "command": ["rewind", *TRAIN], "cpus": os.cpu_count(),
              "cases": cases, "targets": targets}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "concurrency.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
