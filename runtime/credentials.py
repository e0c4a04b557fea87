"""Tokens, a CA and a server certificate for a Rewind deployment, written as files.

`rewind secrets init` calls `write_credentials`; compose runs it in a one-shot
container, and for Kubernetes its files become the two Secrets the manifests
mount. The names are cert-manager's (tls.crt, tls.key, ca.crt), so a
cert-manager Certificate can replace the generated TLS files unchanged.

The collector token is for `rewind collect`: a service that names its file in
--collector-tokens-file lets it add episodes, get the learner's weights and read
checkpoints, and nothing else. Its line is `collector:<token>`, so the services'
logs name the caller "collector"; a client sends only the token.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

# Each token file and the name its line carries ("" for a bare token).
TOKENS = {"read.token": "", "write.token": "", "collector.token": "collector"}
TLS = ("ca.crt", "ca.key", "tls.crt", "tls.key")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "buffer", "checkpoint", "trainer")


@dataclass(frozen=True)
class Written:
    folder: Path
    made: tuple[str, ...]   # files written now
    kept: tuple[str, ...]   # files that existed and were left as they were


def write_credentials(folder: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365,
                      force: bool = False) -> Written:
    """Write a read, a write and a collector token, a CA and a certificate for `hosts` into `folder`.

    Existing files are kept (so a restarted init container changes nothing)
    unless `force`; the TLS files are made as a set, so a CA always matches its
    certificate. Secret files are 0600, certificates 0644.
    """
    folder.mkdir(parents=True, exist_ok=True)
    made, kept = [], []
    for name, owner in TOKENS.items():
        if (folder / name).exists() and not force:
            kept.append(name)
            continue
        token = secrets.token_urlsafe(32)
        _write(folder / name, (f"{owner}:{token}" if owner else token).encode() + b"\n", 0o600)
        made.append(name)
    if all((folder / name).exists() for name in TLS) and not force:
        kept.extend(TLS)
    else:
        for name, data in _tls_files(hosts, days).items():
            _write(folder / name, data, 0o600 if name.endswith(".key") else 0o644)
            made.append(name)
    return Written(folder, tuple(made), tuple(kept))


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with its final mode from the start (a key is never readable by others, even briefly)."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(partial, mode)
    os.replace(partial, path)


def _tls_files(hosts: tuple[str, ...], days: int) -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("Rewind CA"))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days)))

    ca = (builder("Rewind CA", ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    alt = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    cert = (builder(hosts[0] if hosts else "rewind", key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    return {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": pem_key(ca_key),
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": pem_key(key)}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
