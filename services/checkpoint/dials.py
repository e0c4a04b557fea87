"""Which buffer services the checkpoint service may dial, and what a failed dial may tell the caller.

Save (BufferSource.address) and RestoreBuffers (BufferTarget.address, or the
address a checkpoint recorded) make the checkpoint service open a connection
to an address a client chose. Unchecked, that lets any client point the
service at any host, port, DNS name or `unix:` socket its network reaches,
and learn from the error which ports are open. So:

- an address must be plain and match an entry of the `buffer_addresses`
  setting (rewind.endpoints, the matcher every outbound dial uses);
- a refusal is PERMISSION_DENIED with one message whatever the address, and an
  allowed address that does not answer as a Rewind service is "not
  reachable", whatever the reason (refused, timed out, unresolvable, another
  server on that port).
"""

from __future__ import annotations

from rewind.endpoints import LOOPBACK, is_allowed, is_plain, may_dial
from rewind.errors import PermissionDenied, RewindError, Unavailable

__all__ = ["DEFAULT_BUFFER_ADDRESSES", "check_dial", "dial_failure", "is_allowed", "is_plain", "refused",
           "unreachable"]

# Local runs put the buffer service on a free loopback port; deployments narrow this to theirs (buffer:50051).
DEFAULT_BUFFER_ADDRESSES = LOOPBACK


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
    if not may_dial(address, allowed):
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
