"""Server plumbing shared by every Rewind service.

`ServiceHost` wraps a grpc.server with what each service needs: explicit
message-size limits, the grpc.health.v1 service (NOT_SERVING while starting
and draining), server reflection for every service, and a graceful stop on
SIGTERM. `handle_errors` maps RewindError to its gRPC status.
"""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rewind.errors import RewindError, Unavailable

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    # A status the service chose is an answer, not a lost connection: a
    # negative pushback tells the client's retry policy not to retry it (gRFC
    # A6), so an UNAVAILABLE store is reported at once, within the deadline.
    context.set_trailing_metadata((("grpc-retry-pushback-ms", "-1"),))
    if isinstance(exc, RewindError):
        context.abort(exc.code, exc.message)
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has details")


def handle_errors(method: Callable) -> Callable:
    """Decorate a servicer method: RewindError -> its status, anything else -> INTERNAL."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error must become a status
                _abort(context, exc, method.__qualname__)

        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            _abort(context, exc, method.__qualname__)

    return unary_wrapper


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
    ) -> None:
        self.bindings = list(bindings)
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.port: int | None = None
        self.stopped = threading.Event()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewind-grpc"),
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
