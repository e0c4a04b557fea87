"""Who may call what: bearer tokens with a read or a write scope, checked once for every RPC.

Tokens live in files, one per line (Kubernetes Secrets mounted as files), and
are read again when a file changes, so rotating a token needs no restart:
write the new token next to the old one, move the clients, then drop the old
line. A write token can do everything a read token can.

Health and reflection stay open: probes and `grpcurl list` must work without a
token. Every other method, of any service, needs a token (deny by default); a
method needs only the read scope when its service lists it as a read method.
The HTTP routes use the same `Authenticator`, so one token works everywhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from rewind.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from rewind.security import AUTHORIZATION, TokenFile
from rewind_runtime.interceptors import refuse

log = logging.getLogger(__name__)

READ, WRITE = "read", "write"
# grpc's own services, open to everyone (probes, discovery).
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


@dataclass(frozen=True)
class Caller:
    """Who a call came from, as far as the tokens tell."""

    scope: str  # READ or WRITE
    token_line: int  # which line of its file matched (for logs; never the token itself)


class Authenticator:
    """Checks `authorization: Bearer <token>` against the read and write token files.

    Args:
        read_tokens_file: tokens allowed to read.
        write_tokens_file: tokens allowed to read and write.
        Both empty: authentication is off (`enabled` is False).
    """

    def __init__(self, read_tokens_file: str = "", write_tokens_file: str = "") -> None:
        self._files = [(scope, TokenFile(path, f"{scope} tokens file"))
                       for scope, path in ((WRITE, write_tokens_file), (READ, read_tokens_file)) if path]
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
            for line, known in enumerate(file.lines(), start=1):
                if hmac.compare_digest(given, known.encode()) and found is None:
                    found = Caller(scope, line)
        if found is None:
            raise Unauthenticated("authorization: the token is not valid for this service")
        return found

    def authorize(self, authorization: str | None, needed: str, what: str) -> Caller | None:
        """Check that the caller may do `what`, which needs scope `needed`.

        Returns:
            The caller, or None when authentication is off.

        Raises:
            Unauthenticated: see identify().
            PermissionDenied: a read token asking for a write.
        """
        if not self.enabled:
            return None
        caller = self.identify(authorization)
        if needed == WRITE and caller.scope != WRITE:
            raise PermissionDenied(f"{what}: needs a write token; this token may only read")
        return caller


def metadata_value(metadata: Iterable[tuple[str, str]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token, or without the scope their method needs.

    Args:
        authenticator: the token files.
        read_methods: full method names ("/rewind.buffer.v1.BufferService/GetStats")
            a read token may call; every other non-open method needs write.
    """

    def __init__(self, authenticator: Authenticator, read_methods: Iterable[str]) -> None:
        self.authenticator = authenticator
        self.read_methods = frozenset(read_methods)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.authenticator.enabled or is_open(method):
            return handler
        needed = READ if method in self.read_methods else WRITE
        try:
            self.authenticator.authorize(metadata_value(handler_call_details.invocation_metadata, AUTHORIZATION),
                                         needed, method.rsplit("/", 1)[-1])
        except (Unauthenticated, PermissionDenied) as exc:
            log.info("refused %s: %s", method, exc.message)
            return refuse(handler, exc, method)
        return handler


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
