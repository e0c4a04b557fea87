"""A cap on the streams a service holds open, so that streams can never starve it.

A gRPC server runs each call on one of its `workers` threads, and a stream
(SampleStream, Snapshot, Download, Save, Restore, ...) keeps its thread for as
long as it is open. Without a cap, `workers` long or slow streams leave no
thread for anything else: health checks miss their deadline, the liveness
probe restarts the pod, and a buffer service's replay data is lost. So at most
`max_streams` streams run at once (half the workers by default); the excess is
answered RESOURCE_EXHAUSTED at once, and the other half of the threads stays
for health and unary calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from rewind.errors import ResourceExhausted
from rewind_runtime.interceptors import replace_behavior


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Runs at most `limit` streaming calls of the methods under `prefix` at once.

    The count is taken when the method starts running (not when the call
    arrives), so a call cancelled before it ran never holds a slot.
    """

    def __init__(self, limit: int, prefix: str = "/rewind.") -> None:
        self.limit, self.prefix = limit, prefix
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def _enter(self) -> None:
        with self._lock:
            if self._open >= self.limit:
                raise ResourceExhausted(f"streams: this service already has {self.limit} streams open (its "
                                        "max_streams); retry with back-off, or raise --max-streams and --workers")
            self._open += 1

    def _leave(self) -> None:
        with self._lock:
            self._open -= 1

    def _unary_result(self, behavior: Callable) -> Callable:
        def handle(request, context):
            self._enter()
            try:
                return behavior(request, context)
            finally:
                self._leave()

        return handle

    def _streamed(self, behavior: Callable) -> Callable:
        def handle(request, context) -> Iterator:
            self._enter()
            try:
                yield from behavior(request, context)
            finally:
                self._leave()

        return handle

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix) or not (
                handler.request_streaming or handler.response_streaming):
            return handler
        return replace_behavior(handler, lambda behavior, streams: (self._streamed if streams
                                                                    else self._unary_result)(behavior))
