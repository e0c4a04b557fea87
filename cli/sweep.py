"""`rewind sweep`: several trainings on one machine, each pinned to its share of the CPUs.

Each run is `rewind train` with one seed of the sweep and the flags after
`--`, started with an affinity mask of its own share of this process's CPUs;
the run (and the services it starts with --local-services) then sizes its
threads from that share instead of taking every core, so runs side by side
each go at about their share of the speed instead of stopping each other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = """examples:
  rewind sweep --seeds 1,2 -- --local-services --model-size tiny --steps 8000
  rewind sweep --seeds 1,2,3,4 --parallel 2 --logs sweep-logs -- --local-services --task cartpole-swingup

Each seed's run gets the run id <task>-seed<seed> (so `--resume-from-checkpoint latest` continues
each one) and its output goes to <logs>/seed<seed>.log."""


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind sweep`."""
    sweep = groups.add_parser("sweep", help="run several seeds at once, each pinned to its share of the CPUs",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--seeds", type=_seeds, required=True, help="comma-separated seeds, one run each")
    sweep.add_argument("--parallel", type=int, default=0,
                       help="runs at once (default: one per CPU this process may use, at most one per seed)")
    sweep.add_argument("--logs", default="sweep-logs", help="folder for each run's output (default sweep-logs)")
    sweep.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the flags of `rewind train`")
    sweep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rewind.errors import InvalidArgument
    from rewind_runtime.threads import affinity_cpus, cpu_shares

    train_args = [a for a in args.train_args if a != "--"]
    if any(a in ("--seed", "--run-id", "--run_id") or a.startswith(("--seed=", "--run-id=")) for a in train_args):
        raise InvalidArgument("train_args: --seed and --run-id are the sweep's: each run gets its seed and "
                              "the run id <task>-seed<seed>")
    cpus = affinity_cpus()
    parallel = args.parallel or min(len(args.seeds), len(cpus))
    if parallel < 1:
        raise InvalidArgument(f"parallel: must be a positive integer, got {args.parallel}")
    shares = cpu_shares(cpus, parallel)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    codes = _run_all(args.seeds, train_args, shares, logs)
    for seed, code in codes.items():
        print(f"seed {seed}: exit {code}, log {logs / f'seed{seed}.log'}")
    return 0 if all(code == 0 for code in codes.values()) else 1


def _run_all(seeds: list[int], train_args: list[str], shares: list[list[int]], logs: Path) -> dict[int, int]:
    """Run the seeds, at most len(shares) at once, each pinned to a free share; returns {seed: exit code}."""
    pending, running, codes = list(seeds), {}, {}
    free = list(range(len(shares)))
    while pending or running:
        while pending and free:
            seed, slot = pending.pop(0), free.pop(0)
            running[seed] = (_start(seed, train_args, shares[slot], logs), slot)
            print(f"seed {seed}: CPUs {','.join(map(str, shares[slot]))}", flush=True)
        pid, status = os.wait()
        for seed, (proc, slot) in list(running.items()):
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                codes[seed] = proc.returncode
                free.append(slot)
                del running[seed]
    return {seed: codes[seed] for seed in seeds}


def _start(seed: int, train_args: list[str], cpus: list[int], logs: Path) -> subprocess.Popen:
    log = open(logs / f"seed{seed}.log", "wb")  # the child keeps its own copy of the descriptor
    try:
        return subprocess.Popen([sys.executable, "-m", "rewind_cli", "train", *train_args, "--seed", str(seed)],
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    finally:
        log.close()
