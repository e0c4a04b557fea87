"""ServiceHost: the gRPC server every Rewind service runs in.

It wraps a grpc.server with what each service needs: explicit message-size
limits, the grpc.health.v1 service (NOT_SERVING while starting and
draining), server reflection for every service, the interceptors written once
for every method (metrics, tokens and scopes, then errors to statuses), TLS,
and a graceful stop on SIGTERM.

With an HTTP port it also serves an HttpHost (runtime/http.py) on the same
interface with the same tokens and TLS: `/metrics` (this host's own registry,
`metrics`), `/healthz` (SERVING like the health service) and whatever routes
the service adds to `http_app` before `start()`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rewind.errors import Unavailable
from rewind_runtime.auth import COLLECTOR, READ, Authenticator, AuthInterceptor, check_exposure
from rewind_runtime.auth_throttle import AuthThrottle
from rewind_runtime.http import HttpHost
from rewind_runtime.interceptors import ErrorInterceptor
from rewind_runtime.metrics import MetricsInterceptor, RpcMetrics, new_registry
from rewind_runtime.server_settings import ServerSettings
from rewind_runtime.stream_limit import StreamLimitInterceptor
from rewind_runtime.tls import ServerTLS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name, servicer and registration function.

    `read_methods` names the methods a read token may call, `collector_methods`
    those a collector token may call; every other method of the service needs a
    write token (runtime/auth.py).
    """

    name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    read_methods: tuple[str, ...] = ()
    collector_methods: tuple[str, ...] = ()   # what a collector token may call (runtime/auth.py)
    quiet_methods: tuple[str, ...] = ()       # writes on the data path: logged at debug level, not per call
    # Called when the host starts draining: ends calls that wait on the service's own state (a rate
    # limiter) now, rather than at the end of the grace period.
    on_drain: Callable[[], None] | None = None

    def full_names(self, methods: tuple[str, ...]) -> frozenset[str]:
        return frozenset(f"/{self.name}/{method}" for method in methods)

    @property
    def full_read_methods(self) -> frozenset[str]:
        return self.full_names(self.read_methods)


class ServiceHost:
    """A started-on-demand gRPC server with health, reflection and drain.

    Args:
        bindings: the services to host.
        host: interface to listen on.
        port: TCP port; 0 picks a free one (see `port` after `start()`).
        max_message_bytes: limit for requests and responses, both ways.
        workers: worker threads; also bounds concurrent calls.
        max_streams: streams open at once (0: half the workers), so that
            health and unary calls always have threads (see stream_limit).
        grace_s: seconds in-flight calls get when stopping.
        port_file: write the bound port to this file once SERVING (for launchers);
            the HTTP port goes to `<port_file>.http` and the health port to
            `<port_file>.health` (both written first).
        authenticator: the token files; None (or no files) serves without
            authentication, which start() allows only on loopback unless
            `allow_unauthenticated`.
        tls: serve TLS (and mTLS) instead of plaintext.
        health_port: also serve the health service alone, in plaintext, on
            this port with threads of its own (-1: no such port).
        allow_unauthenticated: allow no authentication on other interfaces.
        http_port: also serve HTTP (/metrics, /healthz, `http_app`'s routes) on
            this port (0: a free one; -1: no HTTP).
        fallback_ports: those of "port", "health_port" and "http_port" that
            become a free port when taken (defaults nobody asked for); the
            others fail to start, as a port given explicitly must.
    """

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_bytes: int = 64 * 1024 * 1024,
        workers: int = 16,
        max_streams: int = 0,
        grace_s: float = 10.0,
        serve_after_sigterm_s: float = 0.0,
        port_file: str = "",
        authenticator: Authenticator | None = None,
        tls: ServerTLS | None = None,
        allow_unauthenticated: bool = False,
        health_port: int = -1,
        http_port: int = -1,
        fallback_ports: Collection[str] = (),
    ) -> None:
        self.bindings = list(bindings)
        self.authenticator = authenticator or Authenticator()
        self.tls = tls
        self.allow_unauthenticated = allow_unauthenticated
        scoped = {READ: frozenset().union(*(b.full_read_methods for b in self.bindings)),
                  COLLECTOR: frozenset().union(*(b.full_names(b.collector_methods) for b in self.bindings))}
        quiet = frozenset().union(*(b.full_names(b.quiet_methods) for b in self.bindings))
        self.streams = StreamLimitInterceptor(max_streams or max(1, workers // 2))
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.serve_after_sigterm_s = serve_after_sigterm_s
        self._signalled = threading.Event()  # a second signal ends the serving after the first one
        self.port_file = port_file
        self.fallback_ports = frozenset(fallback_ports)
        self.port: int | None = None
        self.stopped = threading.Event()
        self._stop_lock = threading.Lock()  # one drain at a time: SIGTERM twice starts two drain threads
        self.serving = False
        self.metrics = new_registry()
        self.http = HttpHost(host=host, port=http_port, authenticator=self.authenticator, tls=tls,
                             allow_unauthenticated=allow_unauthenticated, registry=self.metrics,
                             serving=lambda: self.serving, title=", ".join(b.name for b in self.bindings) or "Rewind",
                             port_falls_back="http_port" in self.fallback_ports) \
            if http_port >= 0 else None
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewind-grpc"),
            # Outermost first: metrics see every call, refused ones too; a refused call never
            # reaches the method, nor the error mapping.
            interceptors=[MetricsInterceptor(RpcMetrics(self.metrics)),
                          AuthInterceptor(self.authenticator, scoped, quiet), ErrorInterceptor(), self.streams],
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
        self.health_port = health_port
        self._health_server = _health_only_server(self.health) if health_port >= 0 else None
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self._server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    @classmethod
    def from_settings(cls, bindings: Sequence[ServiceBinding], settings: ServerSettings,
                      explicit: Collection[str] = ()) -> ServiceHost:
        """A host listening where `settings` say, with their limits.

        `explicit` names the settings given by a flag, a variable or a file: a port among them never falls
        back to a free one (see ServerSettings.fallback_ports).
        """
        tls = ServerTLS(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) \
            if settings.tls_cert_file else None
        return cls(bindings, host=settings.host, port=settings.port, max_message_bytes=settings.max_message_bytes,
                   workers=settings.workers, max_streams=settings.max_streams, grace_s=settings.grace_s,
                   serve_after_sigterm_s=settings.serve_after_sigterm_s,
                   port_file=settings.port_file,
                   authenticator=Authenticator(settings.read_tokens_file, settings.write_tokens_file,
                                               settings.collector_tokens_file,
                                               AuthThrottle(settings.auth_failure_limit,
                                                            lockout_s=settings.auth_lockout_s)), tls=tls,
                   allow_unauthenticated=settings.allow_unauthenticated, health_port=settings.health_port,
                   http_port=settings.http_port_to_bind, fallback_ports=settings.fallback_ports(explicit))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_app(self) -> FastAPI | None:
        """The HTTP app to add routes to before start() (None: no HTTP port)."""
        return self.http.app if self.http else None

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port after start() (None: no HTTP, or not started)."""
        return self.http.port if self.http else None

    @property
    def http_address(self) -> str | None:
        """host:port of the HTTP server after start() (None: no HTTP, or not started)."""
        return self.http.address if self.http and self.http.port is not None else None

    def _set_health(self, status: int) -> None:
        self.serving = status == health_pb2.HealthCheckResponse.SERVING
        for name in ("", *(b.name for b in self.bindings)):
            self.health.set(name, status)

    def start(self, serving: bool = True) -> int:
        """Bind and start; returns the bound port.

        Args:
            serving: report SERVING at once; pass False when the service still
                has start-up work to do, then call `set_serving()` after it.

        Raises:
            Unavailable: the address cannot be bound (in use, or bad host).
            FailedPrecondition: no authentication on an interface other than loopback.
        """
        self._check_exposure()
        port = self._add_port()
        self.port = port
        if self._health_server is not None:
            self._start_health_server()
        if self.http is not None:
            self._start_http()
        if not self.authenticator.enabled:
            log.warning("authentication is off: anyone who can reach %s may call every method (give "
                        "--write-tokens-file to turn it on)", self.address)
        self._server.start()
        if serving:
            self.set_serving()
        log.info("serving %s on %s (%s)%s", ", ".join(b.name for b in self.bindings), self.address, self.security,
                 f"; HTTP on {self.http.url}" if self.http else "")
        return port

    def _add_port(self) -> int:
        """Bind the gRPC port: the one asked for, or a free one when it is taken and may fall back."""
        return self._listen(self._server, "port", self.requested_port, self.tls, "serving gRPC")

    def _listen(self, server: grpc.Server, setting: str, requested: int, tls: ServerTLS | None,
                serving: str) -> int:
        """Bind `setting`'s port on `server`; when taken, a free one if the setting may fall back.

        Raises:
            Unavailable: the port cannot be bound (naming the setting).
        """
        target = f"{self.host}:{requested}"
        port, error = _bind(server, target, tls)
        if port == 0 and requested > 0 and setting in self.fallback_ports:
            port, _ = _bind(server, f"{self.host}:0", tls)
            if port:
                log.warning("%s %d is taken; %s on port %d instead (give %s to insist on one)",
                            setting, requested, serving, port, setting)
        if port == 0:
            raise Unavailable(f"cannot listen on {target} ({setting}){error}; is another server using the port?")
        return port

    def _check_exposure(self) -> None:
        """Serving open to the network must be asked for (start() says so when it serves open on loopback).

        The HTTP port listens on the same interface with the same tokens, so one check covers both.
        """
        check_exposure(self.host, self.authenticator, self.allow_unauthenticated)

    def _start_http(self) -> None:
        try:
            self.http.start()
        except Exception:
            if self._health_server is not None:
                self._health_server.stop(0)  # nothing of a host that failed to start may keep serving
            raise

    def _start_health_server(self) -> None:
        self.health_port = self._listen(self._health_server, "health_port", self.health_port, None,
                                        "answering health checks")
        self._health_server.start()

    @property
    def security(self) -> str:
        """One line for logs and start-up messages: tokens and TLS."""
        auth = "tokens required" if self.authenticator.enabled else "no authentication"
        tls = ("mTLS" if self.tls.mutual else "TLS") if self.tls else "plaintext"
        return f"{auth}, {tls}"

    def set_serving(self) -> None:
        """Report SERVING on the health service (for every hosted service)."""
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.port_file:
            # Before the port file, which launchers wait for; a predecessor's must not be taken for ours.
            for suffix, port in ((".http", self.http_port), (".health", self._bound_health_port)):
                side_file = Path(f"{self.port_file}{suffix}")
                if port is not None:
                    side_file.write_text(str(port))
                else:
                    side_file.unlink(missing_ok=True)
            Path(self.port_file).write_text(str(self.port))

    @property
    def _bound_health_port(self) -> int | None:
        return self.health_port if self._health_server is not None and self.port is not None else None

    def stop(self, grace_s: float | None = None, serve_s: float = 0.0) -> None:
        """Drain: report NOT_SERVING, (for `serve_s` seconds still take new calls,) then refuse new calls and
        give in-flight ones grace.

        Safe from any number of threads at once: the first drains, the others wait for it and return.
        """
        with self._stop_lock:
            if self.stopped.is_set():
                return
            self.serving = False  # /healthz too says NOT_SERVING while draining
            self.health.enter_graceful_shutdown()
            if serve_s > 0:
                log.info("still serving for %.1fs (serve_after_sigterm_s), so that a final checkpoint can be taken "
                         "from this service; another signal ends it", serve_s)
                self._signalled.wait(serve_s)
            grace = self.grace_s if grace_s is None else grace_s
            log.info("draining (grace %.1fs)", grace)
            stopping = self._server.stop(grace)
            for binding in self.bindings:
                if binding.on_drain is not None:
                    binding.on_drain()
            stopping.wait()
            if self._health_server is not None:
                self._health_server.stop(0).wait()
            if self.http is not None:
                self.http.stop()
            self.stopped.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only)."""

        def on_signal(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            if self._draining:
                self._signalled.set()  # the second: stop serving new calls now
                return
            self._draining = True
            threading.Thread(target=self.stop, kwargs={"serve_s": self.serve_after_sigterm_s}, name="rewind-drain",
                             daemon=True).start()

        self._draining = False

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait(self) -> None:
        """Block until stop() has finished."""
        self.stopped.wait()

    @property
    def signalled(self) -> bool:
        """Whether SIGTERM or SIGINT stopped it (install_signal_handlers)."""
        return getattr(self, "_draining", False)


def _bind(server: grpc.Server, target: str, tls: ServerTLS | None) -> tuple[int, str]:
    """(the bound port, or 0 and why not as ": reason")."""
    try:
        port = server.add_secure_port(target, tls.credentials()) if tls else server.add_insecure_port(target)
    except RuntimeError as exc:
        return 0, f": {exc}"
    return port, ""


def _health_only_server(servicer: health.HealthServicer) -> grpc.Server:
    """A plaintext server with threads of its own that answers health checks only (no secret in them)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                         options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=8)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server
