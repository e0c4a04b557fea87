"""Many collectors, one learner: how collection scales, how the learner is paced, and whether it learns.

Every case is a real run of processes: two shards (`rewind buffer serve`), a checkpoint service, the learner
(`rewind train --collectors K --buffer-addresses ...`) and K `rewind collect` processes, started with the
arguments `rewind train --local-services --collectors K` gives its own (local_collectors.collector_command).

Modes:
  scaling   1, 2, 4 and 8 collectors acting with the policy prior (--no-mpc) on SlowPendulum-v1
            (bench/slow_env.py: every step waits 20 ms, as a remote simulator's would; 50-step episodes).
            The learner is held to 0.005 updates per step, so that it never paces the collectors. Collected
            steps/s over a window of --seconds once K x 4 episodes are in. Target: linear within +-10 %
            (rate(K) / (K x rate(1)) in [0.9, 1.1]).
  pacing    4 such collectors and a learner at 1 update per step (TD-MPC2's ratio), measured once the
            burst of updates after the seed steps is over: updates per collected step over the window, the
            mean policy lag (the learner's /metrics), the seconds the learner waited for batches, and the
            shards' limiter blocked seconds per side (GetStats).
  learning  Pendulum-v1, 2 MPPI collectors and the learner (the tiny model, as bench/learning.py's
            single-process figure), `rewind train --local-services --shards 2 --collectors 2 --steps 8000`:
            its evaluations (10 episodes every 2,000 steps). Target: >= -200 within 8,000 environment steps
            (one seed). About half an hour on 2 CPUs.

  device    the prepared run for a lent 16-core GPU machine (at most about 5 minutes with --seconds 20):
            MPPI collectors 1, 2, 4 and 8 on Pendulum-v1 (model size 5) with the learner on --device cuda
            at 1 update per step: collected steps/s and the learner's updates/s.

Writes bench/results/collectors.json (merged with what earlier modes wrote).

    python -m bench.collectors [--modes scaling,pacing] [--seconds 30] [--counts 1,2,4,8]
    python -m bench.collectors --modes learning
    python -m bench.collectors --modes device --device cuda --seconds 20     # on a lent GPU machine
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rewind import BufferClient, TrainerClient
from rewind_runtime.local import LocalService
from rewind_trainer.local_collectors import collector_command
from rewind_trainer.settings import TrainSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "collectors.json"
TASK = "bench.slow_env:SlowPendulum-v1"
EPISODE = 50
# The scaling runs' learner: so few updates per step that it never paces 8 collectors on 2 CPUs (at 0.02 it
# did, and the limiter held their inserts back for 12.6 s of a 30 s window).
SCALING_UPDATES_PER_STEP = 0.005


@dataclass(frozen=True)
class Case:
    """What one run is: K collectors and the learner's ratio, on which task, model and device."""

    collectors: int
    updates_per_step: float
    task: str = TASK
    mpc: bool = False
    model_size: str = "tiny"
    device: str = "cpu"

    @property
    def episode(self) -> int:
        return EPISODE if self.task == TASK else 200  # SlowPendulum's 50 steps, else Pendulum's


class Run:
    """Two shards, a checkpoint service, a learner and K collectors, in `folder`."""

    def __init__(self, folder: Path, case: Case) -> None:
        self.folder = folder
        collectors = case.collectors
        env = {k: v for k, v in os.environ.items() if not k.startswith("REWIND_")}
        self.shards = [LocalService(["buffer", "serve"], wait=False, cwd=ROOT) for _ in range(2)]
        self.ckpt = LocalService(["ckpt", "serve", "--store", f"file://{folder}/store"], cwd=ROOT)
        for shard in self.shards:
            shard.wait_until_serving()
        addresses = ",".join(s.address for s in self.shards)
        self.port_file = folder / "port"
        self.log = open(folder / "learner.log", "wb")
        settings = TrainSettings(task=case.task, buffer_addresses=tuple(addresses.split(",")), device=case.device,
                                 checkpoint_address=self.ckpt.address, collectors=collectors, out_dir=str(folder))
        self.learner = subprocess.Popen(
            [sys.executable, "-m", "rewind_cli", "train", "--task", case.task, "--mpc" if case.mpc else "--no-mpc",
             "--model-size", case.model_size, "--device", case.device,
             "--buffer-addresses", addresses, "--checkpoint-address", self.ckpt.address, "--collectors",
             str(collectors), "--updates-per-step", str(case.updates_per_step), "--steps", "100000000",
             "--eval-episodes", "0", "--checkpoint-interval-episodes", "0", "--buffer-size", "200000",
             "--out-dir", str(folder), "--port", "0", "--http-port", "0", "--port-file", str(self.port_file),
             "--no-progress"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = TrainerClient(f"127.0.0.1:{_wait_for_port(self.port_file, self.learner)}", timeout=10)
        learner = f"127.0.0.1:{self.client.address.rsplit(':', 1)[1]}"
        self.collectors = [subprocess.Popen([sys.executable, "-m", "rewind_cli",
                                             *collector_command(settings, i, learner, folder)],
                                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                           for i in range(collectors)]

    def metrics(self) -> dict[str, float]:
        """The learner's /metrics, name (with labels) -> value."""
        port = (self.folder / "port.http").read_text().strip()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {m[0]: float(m[1]) for m in re.findall(r"^(rewind_\S+) (\S+)$", text, re.M)}

    def limiter(self) -> dict[str, float]:
        """The shards' limiter blocked seconds and calls, per side, summed."""
        total = {"inserts_blocked_seconds": 0.0, "samples_blocked_seconds": 0.0, "inserts_blocked_calls": 0,
                 "samples_blocked_calls": 0}
        for shard in self.shards:
            with BufferClient(shard.address) as client:
                stats = client.stats().rate_limiter
            for key in total:
                total[key] += getattr(stats, key)
        return total

    def stop(self) -> None:
        for proc in (*self.collectors, self.learner):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (*self.collectors, self.learner):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.client.close()
        self.log.close()
        for service in (*self.shards, self.ckpt):
            service.kill()


def _wait_for_port(port_file: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the learner exited with {proc.returncode}; see its log")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.2)  # nothing to wait on: the learner writes the file once it serves
    raise SystemExit("the learner did not serve in time")


@contextmanager
def run(case: Case):
    with tempfile.TemporaryDirectory(prefix="rewind-bench-collectors-") as folder:
        running = Run(Path(folder), case)
        try:
            yield running
        finally:
            running.stop()


def window(running: Run, case: Case, seconds: float) -> dict:
    """Collected steps, updates and their rates over `seconds`, once collectors x 4 episodes are in and the
    learner's burst of updates after the seed steps is over (its updates at 90 % of the ratio, the seed steps
    aside: a learner that is behind lags by them, the limiter window's offset)."""
    seed = TrainSettings().seed_steps or 1000
    warm = max(seed, case.collectors * 4 * case.episode)
    deadline = time.monotonic() + 900

    def warming() -> bool:
        status = running.client.status()
        return status.step < warm or status.updates < 0.9 * case.updates_per_step * (status.step - seed)

    while warming():
        if time.monotonic() > deadline:
            raise SystemExit(f"{case}: not warm (>= {warm} steps, updates caught up) in 15 minutes")
        time.sleep(0.5)  # polling the learner's status: there is no event to wait on
    first, t0 = running.client.status(), time.monotonic()
    metrics0, limiter0 = running.metrics(), running.limiter()
    time.sleep(seconds)  # the measured window
    last, t1 = running.client.status(), time.monotonic()
    metrics1, limiter1 = running.metrics(), running.limiter()
    steps, updates = last.step - first.step, last.updates - first.updates
    return {"collectors": case.collectors, "seconds": round(t1 - t0, 2), "steps": steps, "updates": updates,
            "steps_per_s": round(steps / (t1 - t0), 2), "updates_per_s": round(updates / (t1 - t0), 2),
            "updates_per_step": round(updates / max(steps, 1), 3),
            "policy_lag_mean": _metric(metrics1, "policy_lag_mean"),
            "learner_batch_wait_s": round(_metric(metrics1, "batch_wait_seconds_total") -
                                          _metric(metrics0, "batch_wait_seconds_total"), 2),
            "limiter": {k: round(limiter1[k] - limiter0[k], 2) for k in limiter1}}


def _metric(metrics: dict[str, float], name: str) -> float:
    return next((v for k, v in metrics.items() if k.startswith(f"rewind_trainer_{name}")), 0.0)


def scaling(counts: list[int], seconds: float) -> dict:
    cases = []
    for k in counts:
        case = Case(k, SCALING_UPDATES_PER_STEP)
        with run(case) as running:
            cases.append(window(running, case, seconds))
        print(json.dumps(cases[-1]), flush=True)
    one = next((c["steps_per_s"] for c in cases if c["collectors"] == 1), None)
    for c in cases:
        c["linearity"] = round(c["steps_per_s"] / (c["collectors"] * one), 3) if one else None
    met = all(0.9 <= c["linearity"] <= 1.1 for c in cases) if one else None
    return {"cases": cases, "target": "steps/s linear within +-10 %", "met": met}


def pacing(seconds: float) -> dict:
    case = Case(4, 1.0)
    with run(case) as running:
        result = window(running, case, seconds)
    print(json.dumps(result), flush=True)
    return result


def device_run(counts: list[int], seconds: float, device: str) -> dict:
    """MPPI collectors on Pendulum-v1 with the learner at TD-MPC2's ratio, both on `device` (model size 5):
    collected steps/s and the learner's updates/s (the prepared script for a lent GPU machine)."""
    cases = []
    for k in counts:
        case = Case(k, 1.0, task="Pendulum-v1", mpc=True, model_size="5", device=device)
        with run(case) as running:
            cases.append(window(running, case, seconds))
        print(json.dumps(cases[-1]), flush=True)
    return {"device": device, "cases": cases}


def learning() -> dict:
    with tempfile.TemporaryDirectory(prefix="rewind-bench-learning-") as folder:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "rewind_cli", "train", "--local-services", "--shards", "2",
                        "--collectors", "2", "--model-size", "tiny", "--steps", "8000", "--out-dir", folder,
                        "--no-progress", "--port", "0", "--http-port", "0"], cwd=folder, check=True)
        with open(Path(folder) / "tdmpc2" / "pendulum-v1-seed1" / "metrics.csv", newline="") as f:
            evals = [(int(r["step"]), float(r["episode_return"])) for r in csv.DictReader(f) if r["kind"] == "eval"]
    reached = next((step for step, ret in evals if ret >= -200), None)
    return {"evaluations": evals, "first_step_at_or_above_minus_200": reached, "met": reached is not None,
            "hours": round((time.monotonic() - started) / 3600, 2), "seeds": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="scaling,pacing", help="scaling, pacing, learning, device "
                                                                  "(comma-separated)")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window of each case")
    parser.add_argument("--counts", default="1,2,4,8", help="collector counts of the scaling and device modes")
    parser.add_argument("--device", default="cuda", help="the device mode's learner and collectors (cuda, cpu)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "step_ms": float(os.environ.get("REWIND_BENCH_STEP_MS", "20"))}
    for mode in args.modes.split(","):
        if mode == "scaling":
            results["scaling"] = scaling([int(k) for k in args.counts.split(",")], args.seconds)
        elif mode == "pacing":
            results["pacing"] = pacing(args.seconds)
        elif mode == "learning":
            results["learning"] = learning()
        elif mode == "device":
            results[f"device-{args.device}"] = device_run([int(k) for k in args.counts.split(",")], args.seconds,
                                                          args.device)
        else:
            raise SystemExit(f"--modes: unknown mode {mode!r}")
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
