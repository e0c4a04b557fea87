"""Who may call what: bearer tokens with a scope, checked once for every RPC.

Tokens live in files, one per line (Kubernetes Secrets mounted as files), and
are read again when a file changes, so rotating a token needs no restart:
write the new token next to the old one, move the clients, then drop the old
line. A line may name its token, `NAME:TOKEN` (a bare `TOKEN` still works):
the name, never the token, appears in the log of every refused call and every
write.

Scopes are per-method allow-lists, defined beside each service
(`READ_METHODS`, `COLLECTOR_METHODS`):
- write: every method (a write token can do everything);
- read: the service's read methods (stats, lists, snapshots, lookups, status);
- collector: the service's collector methods only (adding episodes, the
  learner's weights, the checkpoint lookups a collector falls back on), so a
  collector's token cannot delete a checkpoint, reset a buffer or stop the
  learner.

Health and reflection stay open: probes and `grpcurl list` must work without a
token. Every other method, of any service, needs a token (deny by default).
The HTTP routes use the same `Authenticator`, so one token works everywhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import grpc

from rewind.errors import FailedPrecondition, PermissionDenied, ResourceExhausted, RewindError, Unauthenticated
from rewind.security import AUTHORIZATION, TokenFile, split_token_line
from rewind_runtime.auth_throttle import AuthThrottle, peer_host
from rewind_runtime.interceptors import replace_behavior, to_status

log = logging.getLogger(__name__)

READ, WRITE, COLLECTOR = "read", "write", "collector"
SCOPES = (WRITE, READ, COLLECTOR)
# grpc's own services, open to everyone (probes, discovery).
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


@dataclass(frozen=True)
class Caller:
    """Who a call came from, as far as the tokens tell."""

    scope: str       # WRITE, READ or COLLECTOR
    token_line: int  # which token of its file matched (1: the first; blank and comment lines do not count)
    name: str = ""   # the line's NAME, when it has one

    @property
    def label(self) -> str:
        """How logs name the caller: its token's name, else its scope and place in its file (never the token)."""
        return self.name or f"{self.scope} token #{self.token_line}"


class Authenticator:
    """Checks `authorization: Bearer <token>` against the token files of each scope.

    Args:
        read_tokens_file: tokens allowed to read.
        write_tokens_file: tokens allowed to do everything.
        collector_tokens_file: tokens allowed to call the collector methods only.
        throttle: shuts out peers that keep failing to authenticate (default: 10 failures in 60 s, 30 s).
        All empty: authentication is off (`enabled` is False).
    """

    def __init__(self, read_tokens_file: str = "", write_tokens_file: str = "",
                 collector_tokens_file: str = "", throttle: AuthThrottle | None = None) -> None:
        # One per host: a peer that fails over gRPC is shut out of the HTTP routes too, and the reverse.
        self.throttle = throttle or AuthThrottle()
        paths = {WRITE: write_tokens_file, READ: read_tokens_file, COLLECTOR: collector_tokens_file}
        self._files = [(scope, TokenFile(paths[scope], f"{scope} tokens file")) for scope in SCOPES if paths[scope]]
        for _, file in self._files:
            file.lines()  # a missing file fails at start, not at the first call

    @property
    def enabled(self) -> bool:
        return bool(self._files)

    def identify(self, authorization: str | None) -> Caller:
        """The caller an `authorization` value stands for.

        Raises:
            Unauthenticated: no bearer token, or one in no file.
        """
        if not authorization:
            raise Unauthenticated("authorization: this service needs a bearer token; pass --token-file or set "
                                  "REWIND_TOKEN_FILE")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization: expected 'Bearer <token>'")
        found: Caller | None = None
        given = token.encode()
        # Compare against every token, with no early exit, so the time taken
        # tells nothing about which (or whether a) token was close.
        for scope, file in self._files:
            for line, text in enumerate(file.lines(), start=1):
                name, known = split_token_line(text)
                if hmac.compare_digest(given, known.encode()) and found is None:
                    found = Caller(scope, line, name)
        if found is None:
            raise Unauthenticated("authorization: the token is not valid for this service")
        return found

    def authorize(self, authorization: str | None, allowed: Collection[str], what: str) -> Caller | None:
        """Check that the caller may do `what`, which the scopes `allowed` may (write may do everything).

        Returns:
            The caller, or None when authentication is off.

        Raises:
            Unauthenticated: see identify().
            PermissionDenied: a token of another scope, naming the scopes that may.
        """
        if not self.enabled:
            return None
        caller = self.identify(authorization)
        if caller.scope != WRITE and caller.scope not in allowed:
            may = " or ".join(scope for scope in SCOPES if scope == WRITE or scope in allowed)
            raise PermissionDenied(f"{what}: needs a {may} token; this {caller.scope} token ({caller.label}) may "
                                   f"not call it")
        return caller


def metadata_value(metadata: Iterable[tuple[str, str]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token, or without a scope their method allows; logs who wrote.

    Args:
        authenticator: the token files.
        scoped_methods: for READ and COLLECTOR, the full method names
            ("/rewind.buffer.v1.BufferService/GetStats") a token of that scope may call; every other
            non-open method needs write.
        quiet_methods: writes on the data path (adding episodes, sampling), logged at debug level, not
            once per call at info.
    """

    def __init__(self, authenticator: Authenticator, scoped_methods: Mapping[str, Iterable[str]],
                 quiet_methods: Iterable[str] = ()) -> None:
        self.authenticator = authenticator
        self.scoped_methods = {scope: frozenset(methods) for scope, methods in scoped_methods.items()}
        self.quiet_methods = frozenset(quiet_methods)

    def allowed(self, method: str) -> frozenset[str]:
        """The scopes that may call `method` (write may call everything)."""
        return frozenset({WRITE} | {scope for scope, methods in self.scoped_methods.items() if method in methods})

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.authenticator.enabled or is_open(method):
            return handler
        allowed = self.allowed(method)
        authorization = metadata_value(handler_call_details.invocation_metadata, AUTHORIZATION)
        try:
            caller = self.authenticator.authorize(authorization, allowed, method.rsplit("/", 1)[-1])
        except (Unauthenticated, PermissionDenied) as exc:
            log.info("refused %s: %s", method, exc.message)
            aborting = self._refusing(exc, method)
            return replace_behavior(handler, lambda _behavior, _streams: aborting)
        if READ not in allowed:  # a write (or a collector's add): say who
            log.log(logging.DEBUG if method in self.quiet_methods else logging.INFO, "%s by %s", method,
                    caller.label)
        return replace_behavior(handler, lambda behavior, streams: self._unless_shut_out(behavior, streams, method))

    def _shut_out(self, context, method: str) -> None:
        """End the call if its peer is shut out (only the call's context knows the peer)."""
        try:
            self.authenticator.throttle.check(peer_host(context.peer()))
        except ResourceExhausted as exc:
            context.abort_with_status(to_status(exc, method))

    def _refusing(self, exc: RewindError, method: str):
        def aborting(_request, context):
            self._shut_out(context, method)
            if isinstance(exc, Unauthenticated):
                self.authenticator.throttle.failed(peer_host(context.peer()))
            context.abort_with_status(to_status(exc, method))

        return aborting

    def _unless_shut_out(self, behavior, streams: bool, method: str):
        if streams:
            def streaming(request, context):
                self._shut_out(context, method)
                yield from behavior(request, context)
            return streaming

        def unary(request, context):
            self._shut_out(context, method)
            return behavior(request, context)
        return unary


def is_open(method: str) -> bool:
    """Whether `method` is one of grpc's own open services (health, reflection)."""
    return method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES


def check_exposure(host: str, authenticator: Authenticator, allow_unauthenticated: bool) -> None:
    """Serving open to the network must be asked for.

    Raises:
        FailedPrecondition: no tokens on an interface other than loopback, without allow_unauthenticated.
    """
    if not authenticator.enabled and not is_loopback(host) and not allow_unauthenticated:
        raise FailedPrecondition(
            f"host: listening on {host} with no tokens would let anyone who reaches the port read, change "
            "and delete everything; give --write-tokens-file (and --read-tokens-file), listen on 127.0.0.1, or "
            "pass --allow-unauthenticated on a network you trust")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
