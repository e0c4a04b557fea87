"""Server TLS: the certificate and key, and optionally the CA that client certificates must chain to (mTLS).

The files are read again when they change (cert-manager renews them in place),
so a renewed certificate is served from the next handshake without a restart,
by the gRPC server (`credentials()`) and by the HTTP server (`ssl_context()`) alike.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from rewind.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTLS:
    """The files of a TLS server; `client_ca_file` makes client certificates required (mTLS).

    Raises:
        InvalidArgument: a missing file, or a key without a certificate.
    """

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    def __post_init__(self) -> None:
        if not self.cert_file or not self.key_file:
            raise InvalidArgument("tls_cert_file, tls_key_file: TLS needs both the certificate and its key")
        for name, path in (("tls_cert_file", self.cert_file), ("tls_key_file", self.key_file),
                           ("tls_client_ca_file", self.client_ca_file)):
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"{name}: {path} is not a readable file")

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that pick up renewed files at the next handshake."""
        files = _Files(self)
        return grpc.dynamic_ssl_server_credentials(files.configuration(), files.changed,
                                                   require_client_authentication=self.mutual)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the HTTP server that picks up renewed files at the next handshake.

        Raises:
            InvalidArgument: the files do not hold a certificate, its key or a CA.
        """
        return _Contexts(self).outer


def _server_context(tls: ServerTLS) -> ssl.SSLContext:
    """A TLS 1.2+ server context of the files as they are now (client certificates required with a client CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _stamps(tls: ServerTLS) -> tuple:
    """(mtime, size) of each file, None for one missing (caught mid-rename): what tells a renewal."""
    stamps = []
    for path in (p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p):
        try:
            info = os.stat(path)
            stamps.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class _Contexts:
    """The HTTP server's SSLContext, swapped for one of the renewed files at the first handshake after a change.

    `outer` is the context the server wraps its connections in; its SNI callback,
    which OpenSSL calls at every ClientHello (with or without a server name),
    moves the connection to the current context before the certificate is sent.
    """

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = _stamps(tls)
        try:
            self.outer = _server_context(tls)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"tls_cert_file, tls_key_file: cannot load them ({exc})") from None
        self.outer.sni_callback = self._on_hello
        self._current = self.outer

    def _on_hello(self, connection, _server_name, _context) -> None:
        current = self.current()
        if current is not self.outer:
            connection.context = current

    def current(self) -> ssl.SSLContext:
        stamp = _stamps(self.tls)
        with self._lock:
            if stamp == self._stamp or None in stamp:
                return self._current  # unchanged, or caught mid-rename: keep serving the current one
            try:
                self._current = _server_context(self.tls)
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS files changed but cannot be loaded (%s); keeping the current certificate", exc)
                return self._current
            self._stamp = stamp
            log.info("TLS certificate files changed; the HTTP server serves the new ones from now on")
            return self._current


class _Files:
    """The certificate configuration, rebuilt when any of its files changes."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = _stamps(tls)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (Path(self.tls.key_file).read_bytes(), Path(self.tls.cert_file).read_bytes())
        ca = Path(self.tls.client_ca_file).read_bytes() if self.tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def changed(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc calls this before each handshake: a new configuration, or None to keep the current one."""
        stamp = _stamps(self.tls)
        with self._lock:
            if stamp == self._stamp or None in stamp:
                return None  # unchanged, or caught mid-rename: keep serving the current one
            try:
                configuration = self.configuration()
            except OSError as exc:
                log.warning("TLS files changed but cannot be read (%s); keeping the current certificate", exc)
                return None
            self._stamp = stamp
            log.info("TLS certificate files changed; serving the new ones from now on")
            return configuration
