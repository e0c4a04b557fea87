"""Health always answers: with 4x `workers` long streams asked for, health and unary calls still answer at
once and the streams beyond the cap get RESOURCE_EXHAUSTED; a plaintext health-only port serves TLS services."""

from __future__ import annotations

import statistics
import time

import grpc
import pytest

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.channel import make_channel
from rewind.errors import InvalidArgument
from rewind.health import check
from rewind.security import ClientSecurity
from rewind_buffer.server import serve
from tests.support.configs import SMALL
from tests.support.episodes import episode
from tests.support.processes import wait_for

WORKERS = 4


@pytest.fixture
def small_server():
    host = serve(SMALL.replace(port=0, workers=WORKERS, min_history=0))
    with BufferClient(host.address) as client:
        client.add(episode(0, 100))
    yield host
    host.stop(grace_s=0.5)


def open_streams(address: str, count: int) -> tuple[list, list[grpc.StatusCode], grpc.Channel]:
    """`count` endless SampleStreams, each read once so it is known to be running (or refused)."""
    channel = make_channel(address)
    stub = buffer_pb2_grpc.BufferServiceStub(channel)
    running, refused = [], []
    for _ in range(count):
        call = stub.SampleStream(buffer_pb2.SampleStreamRequest(buffer="buffer", num_batches=0, prefetch=1),
                                 timeout=60)
        try:
            next(call)
            running.append(call)
        except grpc.RpcError as exc:
            refused.append((exc.code(), exc.details()))
    return running, refused, channel


def test_health_and_unary_calls_answer_while_4x_workers_streams_are_asked_for(small_server):
    running, refused, channel = open_streams(small_server.address, 4 * WORKERS)
    try:
        cap = WORKERS // 2
        assert len(running) == cap and small_server.streams.open == cap
        assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert f"already has {cap} streams open" in refused[0][1]
        latencies = []
        with make_channel(small_server.address) as probe, BufferClient(small_server.address, timeout=1) as client:
            for _ in range(10):
                started = time.perf_counter()
                assert check(probe, timeout=1) == "SERVING"
                assert client.stats().episodes == 1
                latencies.append(time.perf_counter() - started)
        assert statistics.median(latencies) < 0.1, latencies  # a starved server would miss the 1 s deadline
    finally:
        for call in running:
            call.cancel()
        channel.close()
    # The slots come back when the streams end (each notices its cancellation within its poll interval).
    wait_for(lambda: small_server.streams.open == 0, "the cancelled streams to end", timeout=10)
    again, refused_again, channel = open_streams(small_server.address, 1)
    try:
        assert (len(again), refused_again) == (1, [])
    finally:
        for call in again:
            call.cancel()
        channel.close()


def test_max_streams_must_leave_threads_for_health():
    with pytest.raises(InvalidArgument, match=r"max_streams: 4 must be below workers \(4\)"):
        SMALL.replace(workers=4, max_streams=4)


def test_the_health_port_answers_health_alone_in_plaintext(tmp_path):
    from tests.support.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    host = serve(SMALL.replace(port=0, health_port=0, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key))
    try:
        plain = f"127.0.0.1:{host.health_port}"
        with make_channel(plain, security=ClientSecurity()) as channel:
            assert check(channel) == "SERVING"
            stub = buffer_pb2_grpc.BufferServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetStats(buffer_pb2.GetStatsRequest(buffer="buffer"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # nothing but health there
    finally:
        host.stop(grace_s=0.5)
    with make_channel(plain, security=ClientSecurity()) as channel, pytest.raises(grpc.RpcError):
        check(channel, timeout=1)  # it stops with the service
