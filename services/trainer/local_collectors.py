"""LocalCollectors: the `rewind collect` processes of `rewind train --local-services --collectors M`.

They start once the learner's service serves (they need its GetWeights), each with its own id
(collector-<i>), seed and log file in the run's folder, and its state file in <run folder>/collectors so
that a rerun carries on. Each takes its share of the host's CPUs as the learner does (HostShare). They
get SIGTERM when the run ends (each drops its partial episode and exits 0), and die with the learner
if it is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rewind_runtime.local import STOP_WITH_PARENT
from rewind_runtime.settings import without_settings
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000   # collector i's seed: the run's seed x this + i + 1, apart from the learner's own
STOP_WAIT_S = 10.0    # a collector exits within 2 s of SIGTERM; this is the bound before a kill


def collector_command(settings: TrainSettings, index: int, learner_address: str, run_dir: Path) -> list[str]:
    """The `rewind collect` arguments of collector `index` of this run."""
    return ["collect", "--task", settings.task, "--action-repeat", str(settings.action_repeat),
            "--seed", str(settings.seed * SEED_STRIDE + index + 1), "--collector-id", f"collector-{index}",
            "--buffer-addresses", ",".join(settings.shard_addresses), "--learner-address", learner_address,
            "--checkpoint-address", settings.checkpoint_address, "--agent-id", settings.agent_id,
            "--run-id", settings.run, "--state-dir", str(run_dir / "collectors"), "--device", settings.device]


@contextmanager
def local_collectors(settings: TrainSettings, address: str) -> Iterator[list[subprocess.Popen]]:
    """Run settings.collectors collectors against the learner at `address` until the block ends."""
    if not settings.collectors or not address:
        yield []
        return
    learner = "127.0.0.1:" + address.rsplit(":", 1)[1]  # the learner listens on loopback or every interface
    run_dir = Path(settings.out_dir) / settings.agent_id / settings.run
    (run_dir / "collectors").mkdir(parents=True, exist_ok=True)
    env = {**without_settings(os.environ), "PYTHONUNBUFFERED": "1", STOP_WITH_PARENT: str(os.getpid())}
    processes = []
    try:
        for index in range(settings.collectors):
            with open(run_dir / "collectors" / f"collector-{index}.log", "ab") as out:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "rewind_cli", *collector_command(settings, index, learner, run_dir)],
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        log.info("started %d collector(s); their logs: %s", len(processes), run_dir / "collectors")
        yield processes
    finally:
        _stop(processes)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("collector %d did not stop within %.0f s of SIGTERM: killed", process.pid, STOP_WAIT_S)
            process.kill()
            process.wait()
