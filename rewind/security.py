"""How a client proves who it is and checks whom it talks to: a bearer token and TLS.

Every channel the SDK makes (the clients, health checks, and the calls one
service makes to another) takes a `ClientSecurity`. Unless one is given, it
comes from the environment, so a token or CA set once reaches every call:

    REWIND_TOKEN_FILE        a file holding the bearer token (the first non-blank line)
    REWIND_TLS_CA_FILE       CA certificate(s) to verify the server with; turns TLS on
    REWIND_TLS_CLIENT_CERT_FILE  this client's certificate, for services that require mTLS
    REWIND_TLS_CLIENT_KEY_FILE   its private key
    REWIND_TLS_SERVER_NAME   the name to verify in the server's certificate, when it
                             differs from the host dialled (an IP, a port-forward)

The token file is read again when it changes, so a rotated Kubernetes Secret
takes effect without a restart.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from rewind.errors import InvalidArgument, Unauthenticated

log = logging.getLogger(__name__)

ENV = {
    "token_file": "REWIND_TOKEN_FILE",
    "tls_ca_file": "REWIND_TLS_CA_FILE",
    # Not REWIND_TLS_CERT_FILE/KEY_FILE: those are a server's own certificate (server_settings).
    "tls_client_cert_file": "REWIND_TLS_CLIENT_CERT_FILE",
    "tls_client_key_file": "REWIND_TLS_CLIENT_KEY_FILE",
    "tls_server_name": "REWIND_TLS_SERVER_NAME",
}
AUTHORIZATION = "authorization"
# A token file's line is `NAME:TOKEN` or a bare `TOKEN`: the name says whose the token is in the services'
# logs. A line is named only when what comes before its first ':' is such a name.
TOKEN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")


def split_token_line(line: str) -> tuple[str, str]:
    """(name, token) of a token file's line; the name is "" for a bare token."""
    name, sep, token = line.partition(":")
    if sep and token and TOKEN_NAME.fullmatch(name):
        return name, token
    return "", line


class TokenFile:
    """A secret read from a file, read again whenever the file changes (rotation).

    Args:
        path: the file; blank lines and lines starting with '#' are skipped.
        what: how errors name it ("token file").
    """

    def __init__(self, path: str, what: str = "token file") -> None:
        self.path, self.what = path, what
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._lines: tuple[str, ...] = ()

    def lines(self) -> tuple[str, ...]:
        """The file's non-blank, non-comment lines, stripped."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise Unauthenticated(f"{self.what}: cannot read {self.path} ({exc.strerror})") from None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                text = Path(self.path).read_text(encoding="utf-8")
                self._lines = tuple(line.strip() for line in text.splitlines()
                                    if line.strip() and not line.lstrip().startswith("#"))
                self._stamp = stamp
            return self._lines


@dataclass(frozen=True)
class ClientSecurity:
    """The token and TLS files a client uses; empty fields are off.

    Args:
        token_file: a file holding the bearer token sent as `authorization: Bearer <token>`.
        tls_ca_file: CA certificate(s) the server's certificate must chain to; setting
            it (or a client certificate) makes the channel TLS.
        tls_client_cert_file: this client's certificate chain (mTLS).
        tls_client_key_file: the private key of tls_client_cert_file.
        tls_server_name: the name the server's certificate must carry, when it is
            not the host in the address.
    """

    token_file: str = ""
    tls_ca_file: str = ""
    tls_client_cert_file: str = ""
    tls_client_key_file: str = ""
    tls_server_name: str = ""
    _token: TokenFile | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if bool(self.tls_client_cert_file) != bool(self.tls_client_key_file):
            raise InvalidArgument("tls_client_cert_file, tls_client_key_file: give both (a client certificate needs "
                                  "its key) "
                                  "or neither")
        for name in ("tls_ca_file", "tls_client_cert_file", "tls_client_key_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"{name}: {path} is not a readable file")
        if self.token_file:
            object.__setattr__(self, "_token", TokenFile(self.token_file))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSecurity:
        """The settings in REWIND_TOKEN_FILE and REWIND_TLS_* (see the module's docstring)."""
        environ = os.environ if environ is None else environ
        return cls(**{name: environ.get(variable, "") for name, variable in ENV.items()})

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_client_cert_file)

    def token(self) -> str:
        """The current token ("" when none is configured).

        Raises:
            Unauthenticated: the token file cannot be read or holds no token.
        """
        if self._token is None:
            return ""
        lines = self._token.lines()
        if not lines:
            raise Unauthenticated(f"token file: {self.token_file} holds no token")
        return split_token_line(lines[0])[1]  # a named line (NAME:TOKEN) sends only its token

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for a plaintext channel."""
        if not self.tls:
            return None

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(root_certificates=read(self.tls_ca_file),
                                            private_key=read(self.tls_client_key_file),
                                            certificate_chain=read(self.tls_client_cert_file))

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.tls_server_name)] if self.tls and self.tls_server_name \
            else []


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, reading the token as it is now."""

    def __init__(self, security: ClientSecurity) -> None:
        self.security = security

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != AUTHORIZATION]
        metadata.append((AUTHORIZATION, f"Bearer {self.security.token()}"))
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def secure(channel: grpc.Channel, security: ClientSecurity) -> grpc.Channel:
    """`channel` with the token added to every call (unchanged when there is no token)."""
    return grpc.intercept_channel(channel, _TokenInterceptor(security)) if security.token_file else channel
