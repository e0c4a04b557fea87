"""LocalService's children: a service it started stops when its parent dies, even a parent killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.processes import wait_for

PARENT = """
import subprocess
import sys
from rewind_runtime.local import LocalService
service = LocalService(["buffer", "serve", "--buffer-size", "1000", "--min-history", "0"],
                       stdout=subprocess.DEVNULL)
print(service.proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_service_stops_when_the_parent_that_started_it_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        wait_for(lambda: not _alive(child), "the orphaned service to stop", timeout=60)
    finally:
        parent.kill()
        parent.wait(30)
