"""Subprocesses for the system tests: services, the `rewind` command line, free ports, polling."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rewind_runtime.local import LocalService


class ServiceProcess(LocalService):
    """`rewind <group> serve <args>` in a subprocess, its output in tmp_path/<group>.log."""

    def __init__(self, tmp_path: Path, *args: str, group: str = "buffer", env: dict[str, str] | None = None,
                 port: int = 0) -> None:
        self.log = open(tmp_path / f"{group}.log", "ab")  # closed in stop()
        super().__init__([group, "serve", *args], stdout=self.log, cwd=tmp_path, env=env, port=port)

    def stop(self) -> None:
        self.kill()
        self.log.close()


def rewind(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m rewind_cli <args>` (the `rewind` command), its output captured as text."""
    return subprocess.run([sys.executable, "-m", "rewind_cli", *args], capture_output=True, text=True, timeout=timeout)


# Ports handed to services that are told one (rather than picking their own with port 0). Each test
# worker (pytest-xdist) has its own block, and every block lies below the kernel's ephemeral range
# (32768 and up, where port 0 and outgoing connections land), so a port one worker hands out is never
# the one another worker, or the kernel, hands out between the check here and the service's bind.
PORT_BLOCKS_START, PORT_BLOCK_SIZE, PORT_BLOCKS = 20000, 1000, 12
_next_ports: dict[int, int] = {}


def _worker_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... (none: not under xdist)
    return int(worker.removeprefix("gw") or 0) % PORT_BLOCKS


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's block; the next call gives another one."""
    block = _worker_block()
    start = PORT_BLOCKS_START + block * PORT_BLOCK_SIZE
    for _ in range(PORT_BLOCK_SIZE):
        offset = _next_ports.get(block, os.getpid() % PORT_BLOCK_SIZE)
        _next_ports[block] = (offset + 1) % PORT_BLOCK_SIZE
        port = start + offset
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: a service a test of this worker still runs, or another program
            return port
    raise RuntimeError(f"no free port in {start}-{start + PORT_BLOCK_SIZE - 1}")


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
