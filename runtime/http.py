"""HttpHost: the HTTP side of a Rewind server (FastAPI served by uvicorn in a thread of its own).

Every service serves `/metrics` (Prometheus) and `/healthz` on it; the
checkpoint service adds the training-history pages and their JSON API. It
listens on the same interface as the gRPC server, with the same tokens
(runtime/auth.py: `Authorization: Bearer <token>`, or HTTP Basic with the
token as password so that a browser can log in) and the same TLS files:

- `GET /healthz` is open (probes carry no token); every other route needs a
  token when tokens are configured: a read token for GET and HEAD, a write
  token for anything else;
- errors are JSON, `{"error": {"code": "NOT_FOUND", "message": "..."}}`, with
  the HTTP status that matches the gRPC code (`http_status`);
- `/openapi.json` describes the routes (no `/docs`: its page loads scripts
  from a CDN, and the service must work offline).

    http = HttpHost(host="127.0.0.1", port=0, registry=registry)
    http.app.include_router(router)      # before start()
    http.start(); print(http.url); ...; http.stop()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import grpc
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from rewind.errors import PermissionDenied, ResourceExhausted, RewindError, Unauthenticated, Unavailable
from rewind_runtime.auth import READ, Authenticator, check_exposure
from rewind_runtime.tls import ServerTLS

log = logging.getLogger(__name__)

# The HTTP status of each gRPC code (google.rpc.Code's documented mapping).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# The code an HTTP-level refusal (an unknown route, a wrong method) is reported with.
_CODE_OF_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                   405: "UNIMPLEMENTED", 409: "ALREADY_EXISTS", 413: "RESOURCE_EXHAUSTED",
                   429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
# A browser asks for the token (any user name, the token as password); other clients send Bearer.
CHALLENGE = (("www-authenticate", 'Basic realm="rewind"'), ("www-authenticate", 'Bearer realm="rewind"'))
OPEN_ROUTES = frozenset({"/healthz"})
READ_METHODS = frozenset({"GET", "HEAD"})

# Renders an error for a browser (an HTML page) instead of JSON: (request, status, code, message) -> response.
ErrorPage = Callable[[Request, int, str, str], Response]


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status answering a gRPC `code` (500 for a code with no mapping)."""
    return HTTP_STATUS.get(code, 500)


def bearer(authorization: str | None) -> str | None:
    """The `Authorization` value as Authenticator reads it: Basic credentials become the bearer token (the password).

    Raises:
        Unauthenticated: Basic credentials that do not decode.
    """
    if not authorization:
        return authorization
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("authorization: Basic credentials are not base64 of 'user:token'") from None
    _, _, token = decoded.partition(":")
    return f"Bearer {token}"


class HttpHost:
    """A FastAPI app served by uvicorn in a daemon thread, with Rewind's auth, TLS and error shape.

    Args:
        host: interface to listen on (the gRPC server's).
        port: TCP port; 0 picks a free one (see `port` after `start()`).
        authenticator: the token files; None (or no files) serves open, which
            start() allows only on loopback unless `allow_unauthenticated`.
        tls: serve HTTPS with these files (client certificates required when it has a client CA).
        allow_unauthenticated: allow no authentication on other interfaces.
        registry: serve it on `/metrics` (None: no such route).
        serving: whether `/healthz` answers 200 (else 503); default: always.
        title: the OpenAPI document's title.
        port_falls_back: listen on a free port when `port` is taken (a default port nobody asked for).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, authenticator: Authenticator | None = None,
                 tls: ServerTLS | None = None, allow_unauthenticated: bool = False,
                 registry: CollectorRegistry | None = None, serving: Callable[[], bool] | None = None,
                 title: str = "Rewind", port_falls_back: bool = False) -> None:
        self.host = host
        self.requested_port = port
        self.port_falls_back = port_falls_back
        self.port: int | None = None
        self.authenticator = authenticator or Authenticator()
        self.tls = tls
        self.allow_unauthenticated = allow_unauthenticated
        self.registry = registry
        self.serving = serving or (lambda: True)
        # Set it to answer browsers (requests that accept text/html first) with an HTML page instead of JSON.
        self.error_page: ErrorPage | None = None
        self.app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
        self.app.add_middleware(_AuthMiddleware, http=self)
        _add_error_handlers(self.app, self)
        self._add_routes()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()  # stops may come from several threads at once (SIGTERM twice)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, with a loopback address for a server listening on every interface."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    def _add_routes(self) -> None:
        @self.app.get("/healthz", summary="Health (open: no token needed)")
        async def healthz() -> Response:  # async: a probe never waits for a worker thread
            ok = self.serving()
            return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

        if self.registry is not None:
            @self.app.get("/metrics", summary="Prometheus metrics", response_class=Response)
            def metrics() -> Response:  # in a worker thread: collectors take the services' locks
                return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def error(self, request: Request, status: int, code: str, message: str,
              headers: list[tuple[str, str]] | None = None) -> Response:
        """The answer to a failed request: JSON, or the error page for a browser when one is set."""
        if self.error_page is not None and _wants_html(request.headers.get("accept", "")):
            response = self.error_page(request, status, code, message)
        else:
            response = JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
        for name, value in headers or ():
            response.headers.append(name, value)
        return response

    def start(self) -> int:
        """Bind, then serve in a daemon thread; returns the bound port.

        The socket listens before this returns, so a request sent at once waits
        in its backlog rather than being refused.

        Raises:
            Unavailable: the address cannot be bound.
            FailedPrecondition: no authentication on an interface other than loopback.
            InvalidArgument: the TLS files cannot be loaded.
        """
        check_exposure(self.host, self.authenticator, self.allow_unauthenticated)
        context = self.tls.ssl_context() if self.tls else None
        sock = self._listen()
        self.port = sock.getsockname()[1]
        # log_config=None: uvicorn's records go through the service's own logging, not a config of uvicorn's.
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, log_config=None, lifespan="off",
                                loop="asyncio", http="h11", timeout_graceful_shutdown=5)
        config.load()
        config.ssl = context  # our context, which swaps in renewed files (uvicorn's would keep the first ones)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"rewind-http-{self.port}",
                                        daemon=True)
        self._thread.start()
        log.info("serving HTTP on %s", self.url)
        return self.port

    def _listen(self) -> socket.socket:
        try:
            return _listen(self.host, self.requested_port)
        except PortTaken:
            if not self.port_falls_back:
                raise
        sock = _listen(self.host, 0)
        log.warning("http_port %d is taken; serving HTTP on port %d instead (give http_port to insist on one)",
                    self.requested_port, sock.getsockname()[1])
        return sock

    def _run(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except BaseException:
            log.exception("the HTTP server on %s failed", self.address)
        finally:
            sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (requests in flight get up to uvicorn's 5 s) and free the port.

        Safe from any number of threads at once: each returns once the server has stopped (or the first
        gave up waiting).
        """
        with self._stop_lock:
            thread = self._thread
            if thread is None:
                return
            self._server.request_exit()
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the HTTP server on %s did not stop within %.0fs", self.address, timeout)
            self._thread = None

    def wait(self) -> None:
        """Block until the server stops."""
        thread = self._thread
        if thread is not None:
            thread.join()


class _Server(uvicorn.Server):
    """uvicorn's server, woken at once by stop() instead of noticing it at its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._exit_requested = threading.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        if self._exit_requested.is_set():  # stop() came before the loop existed
            self._wake.set()
        tick = 0
        # Ticks of 10 make on_tick refresh the Date header each time (about once a second).
        while not await self.on_tick(tick):
            tick = (tick + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # requests in flight: uvicorn's graceful drain
            return
        # Nothing in flight: skip the drain's fixed pause, so that stopping a host costs no time.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for server in self.servers:
            await server.wait_closed()


class PortTaken(Unavailable):
    """Another socket listens on the port asked for."""


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    bare = host.strip("[]")
    try:
        found = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Unavailable(f"cannot listen on {host}:{port} (http_port): {exc}") from None
    # A name with both (localhost): IPv4, where clients that spell the address 127.0.0.1 look.
    family, kind, proto, _, address = sorted(found, key=lambda info: info[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted server may take its port back at once; two listeners still cannot share it (no SO_REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and bare == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        error = PortTaken if exc.errno == errno.EADDRINUSE else Unavailable
        raise error(f"cannot listen on {host}:{port} (http_port): {exc.strerror or exc}; is another server "
                    "using the port?") from None
    sock.setblocking(False)
    return sock


def _wants_html(accept: str) -> bool:
    """Whether a request comes from a browser navigating (its Accept lists text/html first)."""
    first = accept.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return first in ("text/html", "application/xhtml+xml")


class _AuthMiddleware:
    """Checks the token of every request but `GET /healthz`: read scope for GET and HEAD, write for the rest."""

    def __init__(self, app: Any, http: HttpHost) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.http.authenticator.enabled:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path in OPEN_ROUTES and method in READ_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        peer = (scope.get("client") or ("unknown",))[0]
        throttle = self.http.authenticator.throttle
        try:
            throttle.check(peer)  # a peer shut out gets the same answer whatever token it sends
            # A read token may GET and HEAD every route; a collector token, none (its methods are gRPC's).
            caller = self.http.authenticator.authorize(bearer(request.headers.get("authorization")),
                                                       {READ} if method in READ_METHODS else set(), f"{method} {path}")
        except (Unauthenticated, PermissionDenied, ResourceExhausted) as exc:
            if isinstance(exc, Unauthenticated):
                throttle.failed(peer)
            log.info("refused %s %s: %s", method, path, exc.message)
            challenge = list(CHALLENGE) if isinstance(exc, Unauthenticated) else []
            response = self.http.error(request, http_status(exc.code), exc.code.name, exc.message, challenge)
            await response(scope, receive, send)
            return
        if method not in READ_METHODS:
            log.info("%s %s by %s", method, path, caller.label)
        await self.app(scope, receive, send)


def _add_error_handlers(app: FastAPI, http: HttpHost) -> None:
    """Every error in the same JSON shape: RewindError, validation, HTTP-level (unknown route) and the unexpected."""

    @app.exception_handler(RewindError)
    async def rewind_error(request: Request, exc: RewindError) -> Response:
        challenge = list(CHALLENGE) if isinstance(exc, Unauthenticated) else []
        return http.error(request, http_status(exc.code), exc.code.name, exc.message, challenge)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return http.error(request, 400, "INVALID_ARGUMENT", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"path: no route {request.url.path!r}; GET /openapi.json lists them"
        elif exc.status_code == 405:
            message = f"method: {request.method} is not allowed on {request.url.path!r}"
        response = http.error(request, exc.status_code, _CODE_OF_STATUS.get(exc.status_code, "UNKNOWN"), message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return http.error(request, 500, "INTERNAL",
                          f"internal error ({type(exc).__name__}); the server log has details")


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each offending field: "step: Input should be a valid integer"."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ())]
        field = ".".join(location[1:]) if len(location) > 1 else ".".join(location) or "request"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "request: invalid"
