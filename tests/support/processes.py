"""Subprocesses for the system tests: services, the `rewind` command line, free ports, polling."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from rewind_runtime.local import LocalService


class ServiceProcess(LocalService):
    """`rewind <group> serve <args>` in a subprocess, its output in tmp_path/<group>.log."""

    def __init__(self, tmp_path: Path, *args: str, group: str = "buffer", env: dict[str, str] | None = None) -> None:
        self.log = open(tmp_path / f"{group}.log", "ab")  # closed in stop()
        super().__init__([group, "serve", *args], stdout=self.log, cwd=tmp_path, env=env)

    def stop(self) -> None:
        self.kill()
        self.log.close()


def rewind(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m rewind_cli <args>` (the `rewind` command), its output captured as text."""
    return subprocess.run([sys.executable, "-m", "rewind_cli", *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
