"""Errors shared by the services and the SDK, one class per gRPC status.

Services raise these; `rewind.serving` turns them into the matching status.
The SDK turns a failed call back into the same class, so callers can write
`except rewind.errors.NotFound` whichever side raised it.
"""

from __future__ import annotations

import grpc


class RewindError(Exception):
    """Base class: an error with a gRPC status code and a one-line message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(RewindError):
    """The request is malformed; the message names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RewindError):
    """A named resource (buffer, run, checkpoint) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RewindError):
    """A resource with that name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RewindError):
    """The request is valid but the system is not in a state to serve it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RewindError):
    """A size or capacity limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(RewindError):
    """Stored or transferred bytes failed an integrity check."""

    code = grpc.StatusCode.DATA_LOSS


class Unavailable(RewindError):
    """The service or its backing store cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RewindError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(RewindError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Internal(RewindError):
    """A bug on the server side; the server's log has the traceback."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        DataLoss,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> RewindError:
    """Convert a failed call into the RewindError subclass for its status.

    Args:
        error: the exception raised by a gRPC stub (it is also a grpc.Call).

    Returns:
        An instance whose message is the server's details string.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, RewindError)
    exc = cls(details or code.name)
    if cls is RewindError:
        exc.code = code
    return exc


def from_rpc_error_at(error: grpc.RpcError, service: str, address: str) -> RewindError:
    """Like from_rpc_error, but an unreachable server's message names the service and its address."""
    exc = from_rpc_error(error)
    if isinstance(exc, Unavailable) and not exc.message.startswith("store "):
        exc.message = f"{service} at {address} is unavailable ({exc.message}); is it running?"
    return exc
