"""Which buffer services the checkpoint service may dial, and what a failed dial may tell the caller.

Save (BufferSource.address) and RestoreBuffers (BufferTarget.address, or the
address a checkpoint recorded) make the checkpoint service open a connection
to an address a client chose. Unchecked, that lets any client point the
service at any host, port, DNS name or `unix:` socket its network reaches,
and learn from the error which ports are open. So:

- an address must be a plain `host:port` (a DNS name, IPv4 address or
  `[IPv6]`, and a port 1..65535): no gRPC scheme (`unix:`, `unix-abstract:`,
  `dns:`, `ipv4:`, `ipv6:`, ...), no list of addresses, no path or query;
- it must match one entry of the `buffer_addresses` setting: an exact
  `host:port`, or a pattern with `*` and `?` (`buffer:50051`,
  `*.rewind.svc.cluster.local:50051`, `127.0.0.1:*`); brackets are literal
  (for IPv6), and names compare case-insensitively, as DNS does;
- a refusal is PERMISSION_DENIED with one message whatever the address, and an
  allowed address that does not answer as a Rewind service is "not
  reachable", whatever the reason (refused, timed out, unresolvable, another
  server on that port).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from rewind.errors import PermissionDenied, RewindError, Unavailable

# Local runs (`rewind train --local-services`, serve_in_process, the tests) put
# the buffer service on a free loopback port, so the default must allow any
# loopback port; deployments narrow it to their buffer service (buffer:50051).
DEFAULT_BUFFER_ADDRESSES = ("127.0.0.1:*", "localhost:*")

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


def refused(field: str) -> PermissionDenied:
    """The one refusal: it names the request field and says nothing about the address or why."""
    return PermissionDenied(f"{field}: this address is not an allowed buffer service "
                            "(the checkpoint service's buffer_addresses setting)")


def check_dial(address: str, allowed: tuple[str, ...], field: str) -> str:
    """Allow a dial to a buffer service, or refuse it; call it before every BufferClient is made.

    Args:
        address: the address a request (or a checkpoint) names.
        allowed: the `buffer_addresses` setting.
        field: the request field the address came from, for the message.

    Returns:
        The address, unchanged.

    Raises:
        PermissionDenied: not a plain host:port, or not in `allowed` (the same
            message either way, so a refusal reveals nothing about the target).
    """
    # The format check comes first: a pattern such as 127.0.0.1:* must never
    # match "127.0.0.1:1,10.0.0.1:2" or anything else that is not one host:port.
    if not (is_plain(address) and is_allowed(address, allowed)):
        raise refused(field)
    return address


def dial_failure(exc: RewindError, address: str, field: str) -> RewindError:
    """What a caller may learn from a failed call to an allowed buffer service.

    A status the buffer service chose carries Rewind's ErrorInfo reason and is
    passed on. Anything else (connection refused, a timeout, a DNS failure, a
    TLS handshake, some other server on that port) says something about the
    network behind the service, so it becomes one message that does not.

    Args:
        exc: the error the BufferClient raised.
        address: the address dialled (already allowed).
        field: the request field the address came from.
    """
    return exc if exc.reason else unreachable(field, address)


def unreachable(field: str, address: str) -> Unavailable:
    """The one message for an allowed address that did not answer as a buffer service."""
    return Unavailable(f"{field}: the buffer service at {address} is not reachable")
