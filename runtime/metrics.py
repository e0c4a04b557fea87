"""Prometheus metrics of a Rewind server: one interceptor counts and times every RPC.

Each ServiceHost has its own `CollectorRegistry` (several hosts run in one
test process, and each must report only its own calls), served on its
`/metrics` HTTP route. The services add their domain gauges to the same
registry as custom collectors that read live state at scrape time.

    rewind_rpc_requests_total{service, method, code}     calls finished, by their final status
    rewind_rpc_duration_seconds{service, method}         time to the final status (streams: to their end)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from rewind_runtime.interceptors import replace_behavior

# From a millisecond health check to a checkpoint upload or snapshot stream of minutes.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)


def new_registry() -> CollectorRegistry:
    """A registry of one server's metrics (never prometheus_client's global one)."""
    return CollectorRegistry(auto_describe=True)


def split_method(method: str) -> tuple[str, str]:
    """("rewind.buffer.v1.BufferService", "AddEpisodes") from "/rewind.buffer.v1.BufferService/AddEpisodes"."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcMetrics:
    """The RPC counter and histogram of one server, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("rewind_rpc_requests", "RPCs finished, by method and final status code",
                                ("service", "method", "code"), registry=registry)
        self.duration = Histogram("rewind_rpc_duration_seconds", "Seconds from the call's arrival to its final "
                                  "status (a stream: to its end)", ("service", "method"), buckets=DURATION_BUCKETS,
                                  registry=registry)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, name = split_method(method)
        self.requests.labels(service, name, code.name).inc()
        self.duration.labels(service, name).observe(seconds)


def _final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status the call ends with: the one set or aborted with; CANCELLED when the client went away (or
    its deadline passed) first; else OK, or UNKNOWN after an exception.
    """
    code = context.code()
    if code is not None:
        return code
    if not context.is_active():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call, by its final code.

    It must be the outermost interceptor, so that calls the auth interceptor
    refuses (UNAUTHENTICATED, PERMISSION_DENIED) are counted too: they end
    through an abort, whose code the context then holds.
    """

    def __init__(self, metrics: RpcMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.metrics = metrics
        self.clock = clock

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED by itself
        method = handler_call_details.method
        return replace_behavior(handler, lambda behavior, streams: (self._streaming if streams else self._unary)(
            behavior, method))

    def _unary(self, behavior: Callable, method: str) -> Callable:
        def handle(request, context):
            started, failed = self.clock(), True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self.metrics.observe(method, _final_code(context, failed), self.clock() - started)

        return handle

    def _streaming(self, behavior: Callable, method: str) -> Callable:
        def handle(request, context) -> Iterator:
            started, failed = self.clock(), True
            try:
                yield from behavior(request, context)
                failed = False
            finally:  # also when grpc closes the generator because the client went away
                self.metrics.observe(method, _final_code(context, failed), self.clock() - started)

        return handle
