"""Presigned store URLs: big bytes go between the store and the process that has (or wants) them, once.

The checkpoint service keeps the store's credentials. For a large object it
signs one PUT of one key, with the object's size and sha256 among the signed
headers (x-amz-checksum-sha256), so the URL cannot write another key, and S3
refuses a body whose checksum differs. The process holding the bytes (a
buffer service for its blocks, the trainer for trainer.pt) sends them with
`put()`, after checking the URL's host against its own allow-list
(rewind.endpoints): a caller can make it dial only the stores its operator
allowed.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rewind.endpoints import may_dial
from rewind.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

# Headers put() sets itself, or that would change what reaches the store: a grant may not carry them.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


@dataclass(frozen=True)
class Grant:
    """One presigned PUT: the URL and the headers the signature covers (sent verbatim).

    Attributes:
        url: http(s) URL with the signature in its query.
        headers: the signed headers besides Host and Content-Length.
        expires_s: seconds the URL stays valid from its issue.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    expires_s: float = 0.0


def endpoint_of(url: str, field_name: str) -> tuple[str, str, int, str]:
    """Check a presigned URL's form; returns (scheme, host, port, 'host:port' as allow-lists spell it).

    Raises:
        InvalidArgument: not an http(s) URL with a host, or it carries user info.
    """
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError:
        raise InvalidArgument(f"{field_name}: {url[:80]!r} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgument(f"{field_name}: {url[:80]!r} is not an http:// or https:// URL with a host")
    if parsed.username is not None or parsed.password is not None:
        raise InvalidArgument(f"{field_name}: a presigned URL carries no user name or password")
    port = port or (443 if parsed.scheme == "https" else 80)
    host = parsed.hostname
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return parsed.scheme, host, port, address


def reachable(grant: Grant, allowed: Iterable[str]) -> bool:
    """Whether a process with allow-list `allowed` would follow this grant (what check_grant would pass)."""
    try:
        return may_dial(endpoint_of(grant.url, "url")[3], allowed)
    except InvalidArgument:
        return False


def check_grant(grant: Grant, allowed: Iterable[str], field_name: str, setting: str) -> str:
    """Refuse a grant this process may not follow, before any connection; returns its 'host:port'.

    Args:
        grant: the presigned PUT.
        allowed: the process's store-endpoint allow-list.
        field_name: the request field the grant came in, for messages.
        setting: the allow-list's setting name, for the refusal.

    Raises:
        InvalidArgument: a malformed URL or a reserved header.
        PermissionDenied: the URL's host:port is not in `allowed`.
    """
    _, _, _, address = endpoint_of(grant.url, f"{field_name}.url")
    for name in grant.headers:
        if name.lower() in _RESERVED_HEADERS or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
            raise InvalidArgument(f"{field_name}.headers: {name[:64]!r} may not be set by a grant")
    if not may_dial(address, allowed):
        raise PermissionDenied(f"{field_name}.url: {address} is not an allowed store endpoint "
                               f"(this process's {setting} setting)")
    return address


def _connect(grant: Grant, field_name: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    """An unopened connection to the grant's host, and the request target (path and query)."""
    scheme, host, port, _ = endpoint_of(grant.url, field_name)
    parsed = urlsplit(grant.url)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    if scheme == "https":
        # The system's CAs (SSL_CERT_FILE names another bundle, e.g. a MinIO's own CA).
        return http.client.HTTPSConnection(host, port, timeout=timeout_s,
                                           context=ssl.create_default_context()), target
    return http.client.HTTPConnection(host, port, timeout=timeout_s), target


def _refusal(status: int, body: bytes, field_name: str, address: str, action: str) -> Exception:
    code = _ERROR_CODE.search(body)
    why = f"HTTP {status}" + (f" {code.group(1).decode(errors='replace')}" if code else "")
    if status >= 500:
        return Unavailable(f"{field_name}: the store at {address} failed the {action} ({why}); try again")
    if status == 404 and action == "download":
        return NotFound(f"{field_name}: the store at {address} has no such object ({why})")
    return FailedPrecondition(f"{field_name}: the store at {address} refused the {action} ({why}); an expired URL, "
                              "or a body that does not match its signed size and sha256")


@contextmanager
def _response(grant: Grant, allowed: Iterable[str], field_name: str, setting: str,
              timeout_s: float) -> Iterator[http.client.HTTPResponse]:
    """The open response of a GET of a presigned URL (checked with check_grant first), the store's
    refusals raised; a transport failure, here or while the body is read, becomes Unavailable."""
    address = check_grant(grant, allowed, field_name, setting)
    conn, target = _connect(grant, field_name, timeout_s)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in grant.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        if response.status >= 300:
            raise _refusal(response.status, response.read(4096), field_name, address, "download")
        yield response
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"{field_name}: the store at {address} did not send the object "
                          f"({type(exc).__name__}: {exc}); try again") from None
    finally:
        conn.close()


def get(grant: Grant, *, allowed: Iterable[str], field_name: str, setting: str, timeout_s: float,
        chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Stream an object's bytes from a presigned GET URL (checked with check_grant first).

    Raises (while iterating):
        PermissionDenied, InvalidArgument: as check_grant.
        NotFound: the store has no such object.
        FailedPrecondition: the store refused the GET (an expired URL).
        Unavailable: the store did not answer, or failed (5xx), or the body ended early.
    """
    with _response(grant, allowed, field_name, setting, timeout_s) as response:
        while chunk := response.read(chunk_bytes):
            yield chunk


def read_all(grant: Grant, size: int, *, allowed: Iterable[str], field_name: str, setting: str,
             timeout_s: float, piece_bytes: int = 8 << 20) -> tuple[bytearray, str]:
    """An object's bytes from a presigned GET, read into one buffer, and their sha256 (hex).

    The bytes land in place (no join at the end), and a second thread hashes each piece while the
    next one arrives: a whole download costs about what the transfer alone costs.

    Raises:
        As get(); and DataLoss: the object is not `size` bytes long.
    """
    buffer = bytearray(size)
    view, digest, got = memoryview(buffer), hashlib.sha256(), 0
    with ThreadPoolExecutor(1, thread_name_prefix="rewind-hash") as hasher:  # one worker: pieces hash in order
        with _response(grant, allowed, field_name, setting, timeout_s) as response:
            while got < size and (n := response.readinto(view[got:got + piece_bytes])):
                hasher.submit(digest.update, view[got:got + n])
                got += n
            extra = response.read(1)
    if got != size or extra:
        raise DataLoss(f"{field_name}: the stored object is {'longer' if extra else f'{got} bytes'}, not the "
                       f"{size} bytes recorded")
    return buffer, digest.hexdigest()


def put(grant: Grant, size: int, pieces: Iterable[bytes | memoryview], *, allowed: Iterable[str],
        field_name: str, setting: str, timeout_s: float) -> None:
    """Send `size` bytes to a presigned URL in one PUT, streaming `pieces`.

    Args:
        grant: the presigned PUT (checked with check_grant first).
        size: the exact byte count of `pieces`, sent as Content-Length.
        pieces: the object's bytes, in order.
        allowed: this process's store-endpoint allow-list.
        field_name: the request field of the grant, for messages.
        setting: the allow-list's setting name.
        timeout_s: connect and per-read/write socket timeout.

    Raises:
        PermissionDenied, InvalidArgument: as check_grant.
        FailedPrecondition: the store refused the PUT (an expired URL, a checksum or signature mismatch).
        Unavailable: the store did not answer, or failed (5xx).
    """
    address = check_grant(grant, allowed, field_name, setting)
    conn, target = _connect(grant, field_name, timeout_s)
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        for name, value in grant.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        sent = 0
        for piece in pieces:
            sent += len(piece)
            if sent > size:
                raise Internal(f"{field_name}: more than the {size} bytes announced to the store")
            conn.send(piece)
        if sent != size:
            raise Internal(f"{field_name}: {sent} bytes, not the {size} announced to the store")
        response = conn.getresponse()
        status, body = response.status, response.read(4096)
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"{field_name}: the store at {address} did not take the upload "
                          f"({type(exc).__name__}: {exc}); save again") from None
    finally:
        conn.close()
    if status >= 300:
        raise _refusal(status, body, field_name, address, "upload")
