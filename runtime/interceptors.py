"""What every Rewind RPC shares, written once as server interceptors.

`ErrorInterceptor` turns an exception raised by a servicer method into the
call's status: a `RewindError` becomes its own code and message, with a
`google.rpc.ErrorInfo` detail whose reason says which failure it was (so a
client can tell a store outage from a service it cannot reach without parsing
messages); anything else becomes INTERNAL, logged here with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from rewind.errors import ERROR_DOMAIN, InvalidArgument, RewindError

log = logging.getLogger(__name__)

# A status the service chose is an answer, not a lost connection: a negative
# pushback tells the client's retry policy not to retry it (gRFC A6), so an
# UNAVAILABLE store is reported at once, within the caller's deadline.
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


# A status travels in trailing metadata, which gRPC caps at 16 KiB: a message that
# echoes a huge client value (a 100,000-character name) would lose the whole answer.
MAX_MESSAGE_CHARS = 2000


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} more characters cut)"


def to_status(exc: BaseException, method: str) -> grpc.Status:
    """The status (code, message, ErrorInfo detail, no-retry pushback) an exception is answered with."""
    metadata: dict[str, str] = {}
    if isinstance(exc, RewindError):
        code, message, reason = exc.code, _bounded(exc.message), exc.reason or exc.code.name
        # Bounded like the message: the status travels in trailing metadata (16 KiB at most).
        metadata = {key[:64]: value[:200] for key, value in list(exc.metadata.items())[:16]}
    else:
        log.error("unexpected error in %s", method, exc_info=exc)
        code = grpc.StatusCode.INTERNAL
        message = f"internal error ({type(exc).__name__}); the server log has details"
        reason = "INTERNAL"
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    status = rpc_status.to_status(status_pb2.Status(code=getattr(code_pb2, code.name), message=message,
                                                    details=[detail]))
    return _Status(status.code, status.details, (*status.trailing_metadata, NO_RETRY))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the method answers INVALID_ARGUMENT.

    grpc itself would answer INTERNAL ("Exception deserializing request!"),
    which blames the server for a client's bytes.
    """


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or anything a malformed message makes the parser raise
            return _Malformed()

    return parse


def _parsed(request, method: str):
    """`request`, or for a request stream an iterator of it, refusing malformed messages."""
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"request: not a valid message for {method.rsplit('/', 1)[-1]} (the bytes do not "
                              "parse as its protobuf type)")
    if hasattr(request, "__next__"):
        return (_parsed(item, method) for item in request)
    return request


def _unary(behavior: Callable, method: str) -> Callable:
    def handle(request, context):
        try:
            return behavior(_parsed(request, method), context)
        except Exception as exc:  # every error must become a status
            context.abort_with_status(to_status(exc, method))

    return handle


def _streaming(behavior: Callable, method: str) -> Callable:
    def handle(request, context) -> Iterator:
        try:
            yield from behavior(_parsed(request, method), context)
        except Exception as exc:  # every error must become a status
            context.abort_with_status(to_status(exc, method))

    return handle


def replace_behavior(handler: grpc.RpcMethodHandler, make: Callable[[Callable, bool], Callable],
                     request_deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler`, whose behaviour is make(behaviour, response_streams).

    grpc reads the request (one or a stream) by the handler's kind, so an
    interceptor that changes what a method does must keep its kind.
    """
    serializers = {"request_deserializer": request_deserializer or handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(make(handler.unary_unary, False), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(make(handler.stream_unary, False), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(make(handler.unary_stream, True), **serializers)
    return grpc.stream_stream_rpc_method_handler(make(handler.stream_stream, True), **serializers)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions from the methods of the services named by `prefix` to statuses.

    Health and reflection are grpc's own and pass through untouched.
    """

    def __init__(self, prefix: str = "/rewind.") -> None:
        self.prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.prefix):
            return handler
        return replace_behavior(handler, lambda behavior, streams: (_streaming if streams else _unary)(behavior,
                                                                                                        method),
                                request_deserializer=_tolerant(handler.request_deserializer))
