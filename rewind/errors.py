"""Errors shared by the services and the SDK, one class per gRPC status.

Services raise these; the server runtime turns them into the matching status
with a `google.rpc.ErrorInfo` detail (domain "rewind", the error's `reason`).
The SDK turns a failed call back into the same class, so callers can write
`except rewind.errors.NotFound` whichever side raised it.
"""

from __future__ import annotations

import grpc

ERROR_DOMAIN = "rewind"


class RewindError(Exception):
    """Base class: an error with a gRPC status code, a reason and a one-line message.

    `reason` travels as the ErrorInfo reason of the status; it defaults to the
    code's name, and subclasses name finer causes (STORE_UNAVAILABLE).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = ""

    def __init__(self, message: str, reason: str = "", metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).reason or self.code.name
        # Travels as the ErrorInfo's metadata: state a caller may act on (a rate limiter's counts).
        self.metadata = dict(metadata or {})

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


class StoreUnavailable(Unavailable):
    """The checkpoint store (S3 or a directory) cannot be reached; the service itself is up."""

    reason = "STORE_UNAVAILABLE"


class DeadlineExceeded(RewindError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(RewindError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(RewindError):
    """No token, or a token the service does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RewindError):
    """A known caller, but not allowed this call (a read token asking to write, a dial outside the allow-list)."""

    code = grpc.StatusCode.PERMISSION_DENIED


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
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def _error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata a Rewind service attached to the status (("", {}) if none)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return "", {}
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info.reason, dict(info.metadata)
    return "", {}


def from_rpc_error(error: grpc.RpcError) -> RewindError:
    """Convert a failed call into the RewindError subclass for its status.

    Args:
        error: the exception raised by a gRPC stub (it is also a grpc.Call).

    Returns:
        An instance whose message is the server's details string and whose
        `reason` is the service's ErrorInfo reason ("" when the status did not
        come from a Rewind service, e.g. a connection that failed).
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    reason, metadata = _error_info(error)
    cls = StoreUnavailable if reason == StoreUnavailable.reason else _BY_CODE.get(code, RewindError)
    exc = cls(details or code.name, metadata=metadata)
    exc.reason = reason  # "" when no Rewind service chose the status
    if cls is RewindError:
        exc.code = code  # a status with no class of its own (UNKNOWN, ABORTED, ...)
    return exc


def from_rpc_error_at(error: grpc.RpcError, service: str, address: str) -> RewindError:
    """Like from_rpc_error; an UNAVAILABLE that no service chose (the connection failed) names the service."""
    exc = from_rpc_error(error)
    if isinstance(exc, Unavailable) and not exc.reason:
        exc.message = f"{service} at {address} is unavailable ({exc.message}); is it running?"
    return exc
