"""One host, many Rewind processes: services and trainings started with their default ports all run.

The rule itself (a default port falls back to a free one; an explicit one fails) is tested on hosts in this
process in tests/service/test_ports.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from rewind import BufferClient
from rewind_runtime.settings import without_settings
from tests.support.episodes import episode
from tests.support.processes import free_port, wait_for
from tests.support.trainer import AGENT_FLAGS

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+), HTTP on (http://127\.0\.0\.1:\d+)")


def _rewind(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`rewind <args>` with no REWIND_* variable of ours, so every port left out is at its default."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "rewind_cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=without_settings(os.environ))


def test_shards_started_by_hand_with_only_their_port_changed_all_serve(tmp_path):
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"buffer-{port}.log" for port in ports]
    procs = [_rewind(["buffer", "serve", "--port", str(port)], tmp_path, log)
             for port, log in zip(ports, logs, strict=True)]
    try:
        wait_for(lambda: all(LISTENING.search(log.read_text()) or proc.poll() is not None
                             for log, proc in zip(logs, procs, strict=True)), "three buffer services", timeout=120)
        found = [LISTENING.search(log.read_text()) for log in logs]
        assert all(found), [log.read_text()[-2000:] for log in logs]
        assert [int(m[1]) for m in found] == ports
        urls = [m[2] for m in found]
        assert len(set(urls)) == 3  # at most one holds the default HTTP port; the others took free ones
        assert sum("is taken; serving HTTP on port" in log.read_text() for log in logs) >= 2
        for index, (port, url) in enumerate(zip(ports, urls, strict=True)):
            with BufferClient(f"127.0.0.1:{port}") as client:
                client.add(episode(index, 10 + index))
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
                metrics = reply.read().decode()
            # Each HTTP port is its own service's: the transitions it counts are the ones added to it.
            assert re.search(rf'rewind_buffer_transitions{{buffer="buffer"}} {10 + index}\.0', metrics), metrics[:500]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def test_two_default_trainings_with_local_services_both_run(tmp_path):
    flags = ["train", "--local-services", "--model-size", "tiny", "--action-repeat", "2", "--steps", "120",
             "--seed-steps", "100", "--eval-episodes", "1", "--no-progress", "--torch-threads", "1", *AGENT_FLAGS]
    runs = [tmp_path / name for name in ("first", "second")]
    procs = []
    for run in runs:
        run.mkdir()
        procs.append(_rewind(flags, run, run / "train.log"))
    try:
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    outputs = [(run / "train.log").read_text() for run in runs]
    assert codes == [0, 0], [out[-3000:] for out in outputs]
    served = [re.search(r"serving rewind\.trainer\.v1\.TrainerService on 127\.0\.0\.1:(\d+)", out) for out in outputs]
    assert all(served) and served[0][1] != served[1][1], outputs
    # Each run's checkpoints went to its own folder's store.
    for run in runs:
        assert list((run / "rewind-data").rglob("manifest.json")), sorted(run.rglob("*"))[:50]
