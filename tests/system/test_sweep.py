"""`rewind sweep`: one run per seed, each pinned to its share of the CPUs and sizing its threads from it."""

from __future__ import annotations

import os
import subprocess
import sys

from rewind_runtime.threads import cpu_shares

TRAIN = ["--local-services", "--model-size", "tiny", "--steps", "5", "--seed-steps", "5", "--eval-episodes", "0",
         "--port", "-1", "--no-progress", "--agent", "batch_size=8"]


def sweep(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewind_cli", "sweep", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)


def test_each_seed_runs_on_its_own_share_and_takes_that_many_threads(tmp_path):
    result = sweep(tmp_path, "--seeds", "1,2", "--logs", "logs", "--", *TRAIN, "--store", f"file://{tmp_path}/store")
    assert result.returncode == 0, result.stdout + result.stderr
    shares = cpu_shares(os.sched_getaffinity(0), 2)
    for seed, share in zip((1, 2), shares, strict=True):
        log = (tmp_path / "logs" / f"seed{seed}.log").read_text()
        assert f"seed {seed}: exit 0" in result.stdout
        assert f"trainer: torch uses {len(share)} thread(s): detected: affinity mask of {len(share)} CPU" in log
        assert f"checkpoint: file://{tmp_path}/store/tdmpc2/pendulum-v1-seed{seed}/step-0000000005" in log


def test_the_seed_and_run_id_belong_to_the_sweep(tmp_path):
    result = sweep(tmp_path, "--seeds", "1,2", "--", *TRAIN, "--run-id", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == ("rewind: error: train_args: --seed and --run-id are the sweep's: each run gets "
                                     "its seed and the run id <task>-seed<seed>")


def test_shares_split_the_cpus_evenly_and_take_turns_when_there_are_fewer_cpus_than_runs():
    assert cpu_shares({0, 1, 2, 3, 4}, 2) == [[0, 1, 2], [3, 4]]
    assert cpu_shares({0, 1}, 2) == [[0], [1]]
    assert cpu_shares({0, 1}, 3) == [[0], [1], [0]]
    assert cpu_shares({4, 6, 8, 10}, 4) == [[4], [6], [8], [10]]
