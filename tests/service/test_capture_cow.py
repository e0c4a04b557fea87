"""Captures copy no rows when taken: rows are copied aside only before a write would change them.

Each test runs a real buffer service in this process (the registry and the capture store are reached
directly only to read counters and to take the old full copy, `export_state(copy=True)`, which every
snapshot must still match byte for byte).
"""

from __future__ import annotations

import random

import grpc
import pytest
import torch

from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.channel import make_channel
from rewind_buffer import snapshot
from rewind_buffer.server import build
from tests.support.configs import SMALL
from tests.support.episodes import episode

CAPACITY = SMALL.buffer_size  # 2,000 transitions


class Service:
    """A started buffer service, its registry and capture store, and a raw stub."""

    def __init__(self, settings=SMALL, **overrides) -> None:
        self.host, self.registry = build(settings.replace(port=0, max_message_mb=16, **overrides))
        self.host.start()
        self.captures = self.host.bindings[0].servicer.captures
        self.channel = make_channel(self.host.address, max_message_bytes=64 * 2**20)
        self.stub = buffer_pb2_grpc.BufferServiceStub(self.channel)
        self.rng = random.Random(0)
        self.next_id = 0

    def close(self) -> None:
        self.channel.close()
        self.host.stop(grace_s=0.5)

    def buffer(self, name: str = "buffer"):
        return self.registry.get(name)

    def add(self, n: int = 1, name: str = "buffer", *, obs_dim: int = 3, sample: bool = True) -> None:
        """n episodes of 40..160 steps, with a sample after each once the buffer is ready."""
        from rewind.buffer_messages import encode_episode

        for _ in range(n):
            request = buffer_pb2.AddEpisodeRequest(buffer=name)
            encode_episode(episode(self.next_id, self.rng.randint(40, 160), obs_dim=obs_dim), request.episode)
            self.stub.AddEpisode(request)
            self.next_id += 1
            if sample and self.buffer(name).ready():
                self.stub.Sample(buffer_pb2.SampleRequest(buffer=name))

    def capture(self, name: str = "buffer"):
        """Capture through the RPC; returns its id, its RowCapture and the old full copy's snapshot, as of then."""
        capture_id = self.stub.Capture(buffer_pb2.CaptureRequest(buffer=name)).capture_id
        reference = blob(self.buffer(name).export_state(copy=True))  # nothing has written since the Capture
        return capture_id, self.captures._captures[capture_id].rows, reference

    def stream(self, capture_id: str, name: str = "buffer", *, chunk_bytes: int = 1024, between=None) -> bytes:
        """The capture's snapshot; `between()` runs after each message received (writes racing the stream)."""
        out = bytearray()
        request = buffer_pb2.SnapshotRequest(buffer=name, capture_id=capture_id, chunk_bytes=chunk_bytes)
        for response in self.stub.Snapshot(request):
            assert response.offset == len(out)
            out += response.chunk
            if between is not None:
                between()
        return bytes(out)


def blob(state) -> bytes:
    _, pieces = snapshot.encode(state.header(), state.tensors)
    return b"".join(bytes(p) for p in pieces)


@pytest.fixture
def svc():
    service = Service()
    yield service
    service.close()


def test_a_capture_copies_nothing_and_streams_the_capture_point_after_wraps_and_evictions(svc):
    svc.add(14)
    capture_id, rows, reference = svc.capture()
    held = svc.buffer()._writer.state_dict()["episodes"]
    assert (rows.copied_bytes, rows.copied_rows) == (0, 0)  # the Capture itself copied no row
    assert rows in svc.buffer()._writer.watchers
    evicted = svc.buffer().episodes_evicted
    svc.add(60)  # about 3 x the capacity: the ring wraps again and again
    assert svc.buffer().episodes_evicted - evicted >= len(held)  # every episode the capture holds is gone
    assert rows.copied_bytes > 0
    assert svc.stream(capture_id) == reference
    assert len(svc.buffer()._writer.watchers) == 0 and rows.released
    header, _ = snapshot.decode(reference)
    assert header["writer"]["episodes"] == held


def test_a_capture_streams_exactly_while_writes_race_the_stream(svc):
    svc.add(14)
    capture_id, rows, reference = svc.capture()
    svc.add(3)
    streamed = svc.stream(capture_id, between=lambda: svc.add(1))
    assert streamed == reference
    assert svc.next_id > 14 + 3 + 20 and len(svc.buffer()._writer.watchers) == 0


def test_two_captures_at_different_points_stream_their_own_points(svc):
    svc.add(12)
    first_id, first, first_reference = svc.capture()
    svc.add(9)
    second_id, second, second_reference = svc.capture()
    assert first_reference != second_reference and second.copied_bytes == 0
    svc.add(40)
    assert first.copied_bytes > 0 and second.copied_bytes > 0
    assert svc.stream(second_id) == second_reference
    assert set(svc.buffer()._writer.watchers) == {first}
    svc.add(5)
    assert svc.stream(first_id, chunk_bytes=4096) == first_reference
    restored = svc.stub.Restore(iter([buffer_pb2.RestoreRequest(buffer="again", chunk=first_reference)]))
    assert restored.stats.episodes_added == 12


def test_the_direct_snapshot_streams_without_a_copy_too(svc):
    svc.add(20)
    reference = blob(svc.buffer().export_state(copy=True))
    request = buffer_pb2.SnapshotRequest(buffer="buffer", chunk_bytes=1024)
    out = bytearray()
    for response in svc.stub.Snapshot(request):
        out += response.chunk
        svc.add(1)
    assert bytes(out) == reference and len(svc.buffer()._writer.watchers) == 0


def test_a_displaced_capture_stops_copying(svc):
    svc.add(14)
    dropped_id, dropped, _ = svc.capture()
    svc.capture()
    svc.capture()  # max_captures=2: the first is dropped
    assert dropped.released and dropped not in svc.buffer()._writer.watchers
    svc.add(40)
    assert dropped.copied_bytes == 0
    with pytest.raises(grpc.RpcError) as info:
        svc.stream(dropped_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_expired_capture_stops_copying_at_the_next_write(svc):
    now = [0.0]
    svc.captures._clock = lambda: now[0]
    svc.add(14)
    capture_id, rows, _ = svc.capture()
    svc.add(2)
    copied = rows.copied_bytes
    now[0] = svc.captures.ttl_s + 1
    svc.add(40)  # no put or take ran: the write itself sees the TTL passed
    assert rows.copied_bytes == copied and rows.released and len(svc.buffer()._writer.watchers) == 0
    with pytest.raises(grpc.RpcError) as info:
        svc.stream(capture_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"capture {capture_id!r} was dropped: it expired" in info.value.details()


def test_an_abandoned_stream_stops_copying(svc):
    svc.add(14)
    capture_id, rows, _ = svc.capture()
    responses = svc.stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", capture_id=capture_id,
                                                             chunk_bytes=1024))
    next(responses)
    responses.cancel()
    svc.add(40)
    deadline = 50
    while rows in svc.buffer()._writer.watchers and deadline:  # the server ends its generator on the cancel
        svc.add(1)
        deadline -= 1
    assert rows.released


def test_copies_over_the_cap_drop_the_capture_with_a_reason():
    # 1 MiB cap; rows of 600 floats (2.4 kB): overwriting ~450 captured rows passes it.
    service = Service(max_capture_copy_mb=1)
    try:
        service.add(20, obs_dim=600, sample=False)
        capture_id, rows, _ = service.capture()
        service.add(30, obs_dim=600, sample=False)
        assert rows.failed and rows not in service.buffer()._writer.watchers
        assert sum(len(p) for p in rows._saved.values()) == 0  # its copies are freed at once
        with pytest.raises(grpc.RpcError) as info:
            service.stream(capture_id)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith(
            f"capture_id: capture {capture_id!r} was dropped: writes since it was taken overwrote more than "
            "max_capture_copy_mb=1 MiB")
        with pytest.raises(grpc.RpcError) as info:
            service.stream(capture_id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # A capture streamed in time is unaffected by the cap.
        capture_id, rows, reference = service.capture()
        service.add(2, obs_dim=600, sample=False)
        assert service.stream(capture_id) == reference
    finally:
        service.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_capture_of_cuda_storage_streams_the_capture_point():
    service = Service(storage_device="cuda")
    try:
        service.add(14)
        assert service.buffer().device.type == "cuda"
        capture_id, rows, reference = service.capture()
        assert rows.copied_bytes == 0
        service.add(60)
        assert rows.copied_bytes > 0
        assert service.stream(capture_id) == reference
    finally:
        service.close()


def test_random_interleavings_of_writes_samples_and_partial_streams_match_the_full_copy(monkeypatch):
    # The mechanism alone (no gRPC): two captures at a time, streamed a few rows per chunk while episodes
    # of random lengths wrap the ring and evict what the captures hold.
    from rewind_buffer import captures
    from rewind_buffer.episode_buffer import EpisodeBuffer
    from rewind_buffer.settings import BufferSettings

    monkeypatch.setattr(captures, "READ_CHUNK_BYTES", 512)
    rng = random.Random(1)
    buf = EpisodeBuffer("b", BufferSettings(buffer_size=600, batch_size=8, min_history=0, horizon=4))
    added = 0

    def add() -> None:
        nonlocal added
        if rng.random() < 0.2:
            buf.load([episode(added + i, rng.randint(5, 140)) for i in range(2)])
            added += 2
        else:
            buf.add(episode(added, rng.randint(5, 140)))
            added += 1
        if rng.random() < 0.5:
            buf.sample()

    for _ in range(30):
        for _ in range(rng.randint(1, 8)):
            add()
        pairs = []
        for _ in range(2):
            pairs.append((buf.export_state(), blob(buf.export_state(copy=True))))
            assert pairs[-1][0].rows.copied_bytes == 0
            for _ in range(rng.randint(0, 4)):
                add()
        for lazy, reference in pairs:
            out = bytearray()
            for piece in snapshot.encode(lazy.header(), lazy.tensors)[1]:
                out += piece
                if rng.random() < 0.3:
                    add()
            assert bytes(out) == reference
        assert len(buf._writer.watchers) == 0
    assert buf.episodes_evicted > 200
