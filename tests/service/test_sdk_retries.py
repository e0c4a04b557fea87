"""The SDK retries a call only when the service answers UNAVAILABLE."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.errors import FailedPrecondition


class FlakyServicer(buffer_pb2_grpc.BufferServiceServicer):
    """GetStats fails UNAVAILABLE once, then answers; Sample always fails FAILED_PRECONDITION."""

    def __init__(self) -> None:
        self.calls = {"GetStats": 0, "Sample": 0}

    def GetStats(self, request, context):
        self.calls["GetStats"] += 1
        if self.calls["GetStats"] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return buffer_pb2.GetStatsResponse(stats=buffer_pb2.BufferStats(name=request.buffer, episodes=7))

    def Sample(self, request, context):
        self.calls["Sample"] += 1
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not ready")


@pytest.fixture
def flaky():
    servicer = FlakyServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    buffer_pb2_grpc.add_BufferServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_unavailable_is_retried_and_other_statuses_are_not(flaky):
    servicer, address = flaky
    with BufferClient(address, timeout=10) as client:
        assert client.num_eps == 7
        assert servicer.calls["GetStats"] == 2
        with pytest.raises(FailedPrecondition, match="not ready"):
            client.sample()
        assert servicer.calls["Sample"] == 1

