"""Server TLS: the certificate and key, and optionally the CA that client certificates must chain to (mTLS).

The files are read again when they change (cert-manager renews them in place),
so a renewed certificate is served from the next handshake without a restart.
"""

from __future__ import annotations

import logging
import os
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


class _Files:
    """The certificate configuration, rebuilt when any of its files changes."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stamps()

    def _paths(self) -> list[str]:
        return [p for p in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file) if p]

    def _stamps(self) -> tuple:
        stamps = []
        for path in self._paths():
            try:
                info = os.stat(path)
                stamps.append((info.st_mtime_ns, info.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (Path(self.tls.key_file).read_bytes(), Path(self.tls.cert_file).read_bytes())
        ca = Path(self.tls.client_ca_file).read_bytes() if self.tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def changed(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc calls this before each handshake: a new configuration, or None to keep the current one."""
        stamp = self._stamps()
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
