"""A throwaway CA with server and client certificates, made at test time (no fixture files to expire)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: str  # file paths
    key: str


@dataclass(frozen=True)
class PKI:
    ca: str            # the CA certificate (ca.crt)
    server: Pair       # for localhost and 127.0.0.1
    client: Pair       # a client certificate from the same CA
    stranger: Pair     # a client certificate from another CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pair(str(cert_path), str(key_path))


def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False,
                 usage=None, names: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> PKI:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and one from a stranger CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("rewind test CA", ca_key, _name("rewind test CA"), ca_key, ca=True)
    other_cert = _certificate("another CA", other_key, _name("another CA"), other_key, ca=True)
    ca = _write(folder, "ca", ca_cert, ca_key)
    pairs = {}
    for stem, issuer, usage, names in (
            ("server", (ca_cert, ca_key), ExtendedKeyUsageOID.SERVER_AUTH, ("localhost", "127.0.0.1")),
            ("client", (ca_cert, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH, ()),
            ("stranger", (other_cert, other_key), ExtendedKeyUsageOID.CLIENT_AUTH, ())):
        key = ec.generate_private_key(ec.SECP256R1())
        pairs[stem] = _write(folder, stem, _certificate(stem, key, issuer[0].subject, issuer[1], usage=usage,
                                                        names=names), key)
    return PKI(ca.cert, pairs["server"], pairs["client"], pairs["stranger"])
