"""`rewind collect` against a real learner and real shards: episodes with the learner's weights, a SIGTERM
that drops the episode in progress, and a restart that carries on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rewind import BufferClient, CheckpointClient
from tests.support.processes import ServiceProcess, wait_for
from tests.support.trainer import BUFFER_FLAGS, TrainerProcess

RUN = ("tdmpc2", "pendulum-v1-seed1")


def collector(tmp_path: Path, shards: str, learner: str, *args: str) -> subprocess.Popen:
    log = open(tmp_path / "collector.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "rewind_cli", "collect", "--buffer-addresses", shards,
                             "--learner-address", learner, "--collector-id", "c-7", "--seed", "11",
                             "--state-dir", str(tmp_path / "collectors"), *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)


def next_index(tmp_path: Path) -> int:
    path = tmp_path / "collectors" / "c-7.json"
    return json.loads(path.read_text())["next_index"] if path.exists() else 0


def test_a_collector_sends_episodes_stops_on_sigterm_and_carries_on_after_a_restart(tmp_path):
    shards = [ServiceProcess(tmp_path, *BUFFER_FLAGS) for _ in range(2)]
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    addresses = ",".join(s.address for s in shards)
    learner = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", addresses, "--steps", "100000",
                             "--publish-weights-every", "50")
    procs: list[subprocess.Popen] = []
    try:
        learner.client.wait_until_serving(timeout=120)
        # As in a Kubernetes Job: the SIGTERM exit code its podFailurePolicy ignores (exiting 0 would complete it).
        procs.append(collector(tmp_path, addresses, f"127.0.0.1:{learner.port}", "--preempt-exit-code", "143"))
        wait_for(lambda: next_index(tmp_path) >= 2, "two episodes from the collector", timeout=300)
        procs[0].send_signal(signal.SIGTERM)
        asked = time.monotonic()
        assert procs[0].wait(timeout=60) == 143
        assert time.monotonic() - asked < 2.0  # the episode in progress is dropped, not finished
        out = (tmp_path / "collector.log").read_text()
        sent = next_index(tmp_path)
        assert f"stopped: c-7 sent {sent} episode(s), next index {sent}" in out
        assert "acting with policy version" in out and f"stopping: c-7 sent {sent} episode(s)" in out
        # A restarted collector carries on from its state file: the next index, not 0.
        procs.append(collector(tmp_path, addresses, f"127.0.0.1:{learner.port}", "--episodes", "1"))
        assert procs[1].wait(timeout=300) == 0
        out = (tmp_path / "collector.log").read_text()
        assert f"c-7 carries on from episode {sent}" in out and f"done: c-7 sent 1 episode(s), next index {sent + 1}" \
            in out
        # Every episode it sent is in the shards, beside the learner's own: the learner's final cut counts both.
        learner.proc.send_signal(signal.SIGTERM)
        assert learner.wait() == 0, learner.output()
        with CheckpointClient(ckpt.address) as c:
            final = c.lookup(*RUN, "latest").checkpoint
        in_shards = sum(BufferClient(s.address).stats().episodes_added for s in shards)
        assert in_shards == final.episode + sent + 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        learner.stop()
        for service in (*shards, ckpt):
            service.stop()
