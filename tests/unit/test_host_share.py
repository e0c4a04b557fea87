"""HostShare: trainings on one host split its CPUs, as real processes come and go (one killed -9)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys

from rewind_runtime.host_share import HostShare, default_folder, start_time

JOINER = """
import sys, time
from pathlib import Path
from rewind_runtime.host_share import HostShare
HostShare.join(Path(sys.argv[1]), 4, lambda n: None)
print("joined", flush=True)
sys.stdin.read()  # held until the test closes stdin (or kills it)
"""


def joined(folder) -> subprocess.Popen:
    """A second training's registration: a process that joins and stays until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", JOINER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "joined"
    return proc


def test_trainings_take_their_share_as_others_come_and_go(tmp_path):
    ticks = itertools.count(0, 10)  # every apply() looks at the folder
    set_to: list[int] = []
    share = HostShare.join(tmp_path, 4, set_to.append, clock=lambda: next(ticks))
    assert (share.threads, set_to) == (4, [])  # alone: every CPU it may use, nothing to change
    other = joined(tmp_path)
    third = joined(tmp_path)
    assert share.apply() == 1 and set_to == [1]  # 4 CPUs // 3 trainings
    third.stdin.close()
    third.wait(timeout=30)  # it ended without leaving: its pid is gone, so it no longer counts
    assert share.apply() == 2 and set_to == [1, 2]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(f"{pid}.json" for pid in (os.getpid(), other.pid))
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=30)
    assert share.apply() == 4 and set_to == [1, 2, 4]
    share.leave()
    assert not list(tmp_path.glob("*.json"))


def test_a_reused_pid_does_not_count_and_odd_files_are_skipped(tmp_path):
    # pid 1 lives, but started at another time than this record says: the pid was reused
    (tmp_path / "1.json").write_text(json.dumps({"pid": 1, "start_time": "not-its-start"}))
    (tmp_path / "junk.json").write_text("{")
    share = HostShare.join(tmp_path, 2, lambda n: None)
    assert share.trainings() == 1 and not (tmp_path / "1.json").exists()
    assert start_time(os.getpid()) and start_time(2**22 + 7) == ""
    assert default_folder().name == "trainings"
    share.leave()


def test_apply_looks_at_the_folder_at_most_every_two_seconds(tmp_path):
    now = [0.0]
    share = HostShare.join(tmp_path, 2, lambda n: None, clock=lambda: now[0])
    other = joined(tmp_path)
    try:
        assert share.apply() == 2  # looked at join, a moment ago
        now[0] = 2.5
        assert share.apply() == 1
    finally:
        other.stdin.close()
        other.wait(timeout=30)
        share.leave()
