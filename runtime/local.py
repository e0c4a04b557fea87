"""LocalService: a `rewind <service> serve` subprocess on a free loopback port.

Used by `rewind train --local-services`, the demo, the benchmarks and the
tests, which all need a service in a separate process and its address once it
is SERVING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rewind.errors import Unavailable
from rewind_runtime.settings import without_settings

# Set for a child LocalService starts: the pid of the parent whose death must stop it (read by the child).
STOP_WITH_PARENT = "_REWIND_STOP_WITH_PARENT"  # not REWIND_*: those are settings, and an unknown one is an error


def stop_with_parent_from_env() -> None:
    """In a child LocalService started (Linux): SIGTERM when the parent dies, so a killed parent leaves no
    service behind.

    The child asks for it itself, first thing, instead of the parent running a preexec_fn between fork
    and exec: a preexec_fn forces fork() over vfork(), and fork() runs gRPC's fork handlers in a parent
    that holds channels and servers, which could hang the parent for good.
    """
    parent = os.environ.pop(STOP_WITH_PARENT, "")
    if not parent.isdigit() or sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class LocalService:
    """Start `python -m rewind_cli <args> --host 127.0.0.1 --port 0` and wait until it serves.

    The service's HTTP port (/metrics; the checkpoint service's history pages)
    is a free one too: `http_port` and `http_url` once it serves (0 and "" when
    it serves no HTTP, as with `--http-port -1`).

    Args:
        args: the command after `rewind`, e.g. ["buffer", "serve", "--min-history", "0"].
        stdout: where the service's output goes (default: inherited).
        cwd: working directory of the service.
        env: extra environment variables.
        timeout: seconds to wait for it to serve.
        wait: wait until it serves (False: start it and call wait_until_serving() later,
            so that several services start side by side).
        port: the port to listen on (0: a free one); a service restarted where its clients look for it.

    Raises:
        Unavailable: the service exited or did not serve in time.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        stdout: IO | int | None = None,
        cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        wait: bool = True,
        port: int = 0,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="rewind-service-")
        port_file = Path(self._dir.name) / "port"
        listen = ["--host", "127.0.0.1", "--port", str(port), "--port-file", str(port_file)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewind_cli", *args, *listen],
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            cwd=cwd,
            env={**without_settings(os.environ), **(env or {}), "PYTHONUNBUFFERED": "1",
                 STOP_WITH_PARENT: str(os.getpid())},
            # Its own session: a Ctrl-C meant for the parent must not stop the service mid-checkpoint.
            start_new_session=True,
        )
        self._port_file, self._timeout, self._args = port_file, timeout, args
        self.port, self.address = 0, ""
        self.http_port, self.http_url = 0, ""
        if wait:
            self.wait_until_serving()

    def wait_until_serving(self) -> LocalService:
        """Wait for the port file the child writes once SERVING; returns self.

        Raises:
            Unavailable: the service exited or did not serve within the timeout.
        """
        deadline = time.monotonic() + self._timeout
        while not (self._port_file.exists() and self._port_file.read_text()):
            if self.proc.poll() is not None:
                raise Unavailable(f"`rewind {' '.join(self._args)}` exited with code {self.proc.returncode} "
                                  "before serving")
            if time.monotonic() > deadline:
                self.kill()
                raise Unavailable(f"`rewind {' '.join(self._args)}` did not serve within {self._timeout:.0f}s")
            time.sleep(0.02)  # the child writes the file once SERVING; there is no event to wait on
        self.port = int(self._port_file.read_text())
        self.address = f"127.0.0.1:{self.port}"
        http_file = self._port_file.with_name(f"{self._port_file.name}.http")  # written before the port file
        if http_file.exists():
            self.http_port = int(http_file.read_text())
            scheme = "https" if any(a.startswith("--tls-cert-file") for a in self._args) else "http"
            self.http_url = f"{scheme}://127.0.0.1:{self.http_port}"
        return self

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful drain) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._dir.cleanup()
        return code

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._dir.cleanup()

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
