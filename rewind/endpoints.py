"""Allow-lists of the addresses a Rewind process may dial: one matcher for every outbound connection.

A process that dials an address someone else chose (the checkpoint service
dialling a buffer service a Save names; a buffer service or the trainer
uploading to a presigned store URL the checkpoint service hands out) checks it
here first, against a setting of `host:port` entries and patterns:

- an address must be a plain `host:port` (a DNS name, IPv4 address or
  `[IPv6]`, and a port 1..65535): no gRPC scheme (`unix:`, `dns:`, ...), no
  list of addresses, no path or query;
- it must match one entry: an exact `host:port`, or a pattern with `*` and
  `?` (`buffer:50051`, `*.rewind.svc.cluster.local:50051`, `127.0.0.1:*`);
  brackets are literal (for IPv6), and names compare case-insensitively, as
  DNS does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from rewind.errors import InvalidArgument

# Local runs (serve_in_process, `rewind train --local-services`, the tests) put services and the
# loopback S3 server on free loopback ports, so defaults allow any loopback port; deployments narrow them.
LOOPBACK = ("127.0.0.1:*", "localhost:*")

MAX_ENTRIES = 64  # entries a request may carry (SaveHeader.store_endpoints, DownloadRequest.store_endpoints)
MAX_ENTRY_CHARS = 260

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PLAIN = re.compile(rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{{1,5}})")
# gRPC reads "<scheme>:<rest>" as a URI when it knows the scheme: "unix:50051"
# is a socket file named 50051, not port 50051 of a host called unix.
_GRPC_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p",
                           "google-c2p-experimental", "passthrough"})


def is_plain(address: str) -> bool:
    """Whether `address` is one host and one port, and nothing gRPC would read another way."""
    match = _PLAIN.fullmatch(address)
    if match is None or match["host"].lower() in _GRPC_SCHEMES:
        return False
    return 1 <= int(match["port"]) <= 65535


def _pattern(entry: str) -> str:
    """An allow-list entry as an fnmatch pattern: `*` and `?` are wildcards, brackets are literal."""
    return "".join({"[": "[[]", "]": "[]]"}.get(c, c) for c in entry.lower())


def is_allowed(address: str, allowed: Iterable[str]) -> bool:
    """Whether a plain `address` matches an entry of `allowed` (exactly or by pattern)."""
    lowered = address.lower()
    return any(fnmatchcase(lowered, _pattern(entry)) for entry in allowed)


def may_dial(address: str, allowed: Iterable[str]) -> bool:
    """Whether `address` is plain and allowed: the check before every connection to a chosen address.

    The format check comes first: a pattern such as 127.0.0.1:* must never
    match "127.0.0.1:1,10.0.0.1:2" or anything else that is not one host:port.
    """
    return is_plain(address) and is_allowed(address, allowed)


def check_entries(entries: Iterable[str], field: str) -> tuple[str, ...]:
    """An allow-list a request carries, checked for size; returns it as a tuple.

    Raises:
        InvalidArgument: more than MAX_ENTRIES entries, or an empty or over-long one.
    """
    entries = tuple(entries)
    if len(entries) > MAX_ENTRIES:
        raise InvalidArgument(f"{field}: {len(entries)} entries; the limit is {MAX_ENTRIES}")
    for i, entry in enumerate(entries):
        if not entry or len(entry) > MAX_ENTRY_CHARS:
            raise InvalidArgument(f"{field}[{i}]: must be a host:port entry or pattern of 1 to "
                                  f"{MAX_ENTRY_CHARS} characters")
    return entries
