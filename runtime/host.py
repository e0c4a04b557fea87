"""ServiceHost: the gRPC server every Rewind service runs in.

It wraps a grpc.server with what each service needs: explicit message-size
limits, the grpc.health.v1 service (NOT_SERVING while starting and
draining), server reflection for every service, the error interceptor (so no
servicer method maps its own errors), and a graceful stop on SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rewind.errors import Unavailable
from rewind_runtime.interceptors import ErrorInterceptor
from rewind_runtime.server_settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name, servicer and registration function."""

    name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]


class ServiceHost:
    """A started-on-demand gRPC server with health, reflection and drain.

    Args:
        bindings: the services to host.
        host: interface to listen on.
        port: TCP port; 0 picks a free one (see `port` after `start()`).
        max_message_bytes: limit for requests and responses, both ways.
        workers: worker threads; also bounds concurrent calls.
        grace_s: seconds in-flight calls get when stopping.
        port_file: write the bound port to this file once SERVING (for launchers).
    """

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = 64 * 1024 * 1024,
        workers: int = 16,
        grace_s: float = 10.0,
        port_file: str = "",
    ) -> None:
        self.bindings = list(bindings)
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.port_file = port_file
        self.port: int | None = None
        self.stopped = threading.Event()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewind-grpc"),
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                # Two servers must never share a port silently.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=workers * 4,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self._server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    @classmethod
    def from_settings(cls, bindings: Sequence[ServiceBinding], settings: ServerSettings) -> ServiceHost:
        """A host listening where `settings` say, with their limits."""
        return cls(bindings, host=settings.host, port=settings.port, max_message_bytes=settings.max_message_bytes,
                   workers=settings.workers, grace_s=settings.grace_s, port_file=settings.port_file)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _set_health(self, status: int) -> None:
        for name in ("", *(b.name for b in self.bindings)):
            self.health.set(name, status)

    def start(self, serving: bool = True) -> int:
        """Bind and start; returns the bound port.

        Args:
            serving: report SERVING at once; pass False when the service still
                has start-up work to do, then call `set_serving()` after it.

        Raises:
            Unavailable: the address cannot be bound (in use, or bad host).
        """
        target = f"{self.host}:{self.requested_port}"
        try:
            port = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {target}: {exc}; is another server using the port?") from None
        if port == 0:
            raise Unavailable(f"cannot listen on {target}; is another server using the port?")
        self.port = port
        self._server.start()
        if serving:
            self.set_serving()
        log.info("serving %s on %s", ", ".join(b.name for b in self.bindings), self.address)
        return port

    def set_serving(self) -> None:
        """Report SERVING on the health service (for every hosted service)."""
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.port_file:
            Path(self.port_file).write_text(str(self.port))

    def stop(self, grace_s: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, give in-flight ones grace."""
        if self.stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        grace = self.grace_s if grace_s is None else grace_s
        log.info("draining (grace %.1fs)", grace)
        self._server.stop(grace).wait()
        self.stopped.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only)."""

        def on_signal(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="rewind-drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait(self) -> None:
        """Block until stop() has finished."""
        self.stopped.wait()
