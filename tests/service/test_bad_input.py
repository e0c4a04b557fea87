"""Every client mistake gets its specific status, names the field, and changes nothing."""

from __future__ import annotations

import io

import grpc
import pytest
import torch

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_messages import encode_episode
from rewind.errors import InvalidArgument, ResourceExhausted
from tests.support.episodes import episode

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def snapshot_bytes(client: BufferClient, name: str = "buffer") -> bytes:
    out = io.BytesIO()
    client.using(name).snapshot(out)
    return out.getvalue()


def add_request(fields: dict[str, torch.Tensor], buffer: str = "buffer") -> buffer_pb2.AddEpisodeRequest:
    request = buffer_pb2.AddEpisodeRequest(buffer=buffer)
    encode_episode(fields, request.episode)
    return request


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


EPISODE_CASES = [
    ("missing key", lambda: without(episode(5, 20), "action"), "episode: missing field(s) action"),
    ("extra key", lambda: {**episode(5, 20), "task": torch.zeros(20)}, "unexpected field(s) task"),
    ("wrong dtype", lambda: {**episode(5, 20), "obs": episode(5, 20)["obs"].double()}, "episode.obs: dtype float64"),
    ("wrong shape", lambda: {**episode(5, 20), "obs": torch.zeros(20, 4)}, "episode.obs: per-step shape [4]"),
    ("mismatched lengths", lambda: {**episode(5, 20), "reward": torch.zeros(19)}, "episode.reward: leading dims [19]"),
    ("too short", lambda: episode(5, 3), "episode.obs: 3 steps, but horizon 3 needs at least 4"),
    ("zero length", lambda: episode(5, 0), "episode: zero-length episode"),
    ("reward not scalar", lambda: {**episode(5, 20), "reward": torch.zeros(20, 1)}, "episode.reward: shape [20, 1]"),
    ("longer than capacity", lambda: episode(5, 2001), "exceed the buffer's capacity of 2000"),
]


@pytest.mark.parametrize("name,make,message", EPISODE_CASES, ids=[c[0] for c in EPISODE_CASES])
def test_bad_episode_is_invalid_argument_and_changes_nothing(seeded, stub, name, make, message):
    before = snapshot_bytes(seeded)
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(add_request(make()))
    assert info.value.code() == INVALID
    assert message in info.value.details()
    assert snapshot_bytes(seeded) == before


def test_first_episode_is_validated_too(client, stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(add_request(without(episode(0, 20), "done")))
    assert info.value.code() == INVALID and "missing field(s) done" in info.value.details()
    assert client.stats().device == "" and client.num_eps == 0  # schema still open


def test_empty_message_is_invalid_argument(seeded, stub):
    before = snapshot_bytes(seeded)
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(buffer_pb2.AddEpisodeRequest(buffer="buffer"))
    assert info.value.code() == INVALID and "episode: no fields" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(buffer_pb2.AddEpisodeRequest())
    assert info.value.code() == INVALID and "buffer: a buffer name is required" in info.value.details()
    assert snapshot_bytes(seeded) == before


def test_tensor_bytes_must_match_shape(seeded, stub):
    request = add_request(episode(5, 20))
    request.episode.fields["obs"].data = request.episode.fields["obs"].data[:-4]
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(request)
    assert info.value.code() == INVALID
    assert "episode.obs.data: 236 bytes, but shape [20, 3] of float32 needs 240" in info.value.details()
    request = add_request(episode(5, 20))
    request.episode.fields["action"].dtype = 0
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(request)
    assert info.value.code() == INVALID and "episode.action.dtype" in info.value.details()


def test_oversized_message_is_resource_exhausted(seeded, stub):
    before = snapshot_bytes(seeded)
    huge = {**episode(5, 20), "obs": torch.zeros(20, 60_000)}  # ~4.6 MiB > the 4 MiB limit
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(add_request(huge))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(ResourceExhausted, match="episode: encodes to 4.6 MiB"):
        seeded.add(huge)  # the SDK refuses before sending
    assert snapshot_bytes(seeded) == before


def test_load_is_all_or_nothing(seeded):
    before = snapshot_bytes(seeded)
    batch = [episode(5, 20), episode(6, 20), without(episode(7, 20), "reward"), episode(8, 20)]
    with pytest.raises(InvalidArgument, match=r"episodes\[2\]: missing field\(s\) reward"):
        seeded.load(batch)
    assert snapshot_bytes(seeded) == before


def test_empty_load_stream_is_invalid_argument(seeded, stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadEpisodes(iter([]))
    assert info.value.code() == INVALID and "no episodes" in info.value.details()


def test_unknown_buffer_is_not_found_everywhere(stub):
    calls = [
        lambda: stub.GetStats(buffer_pb2.GetStatsRequest(buffer="ghost")),
        lambda: stub.AddEpisode(add_request(episode(0, 20), buffer="ghost")),
        lambda: stub.Sample(buffer_pb2.SampleRequest(buffer="ghost")),
        lambda: list(stub.SampleStream(buffer_pb2.SampleStreamRequest(buffer="ghost"))),
        lambda: list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="ghost"))),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "buffer: no buffer named 'ghost'" in info.value.details()


def test_bad_names_and_settings(stub):
    for name in ("../etc", "a/b", "x" * 101, "a..b", "buffer\n"):
        with pytest.raises(grpc.RpcError) as info:
            stub.GetStats(buffer_pb2.GetStatsRequest(buffer=name))
        assert info.value.code() == INVALID and "buffer:" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateBuffer(buffer_pb2.CreateBufferRequest(buffer="buffer"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateBuffer(
            buffer_pb2.CreateBufferRequest(buffer="new", settings=buffer_pb2.BufferSettings(min_history=5000))
        )
    assert info.value.code() == INVALID and "min_history: 5000 exceeds buffer_size 2000" in info.value.details()


def test_stream_and_snapshot_arguments(seeded, stub):
    for request, field in (
        (buffer_pb2.SampleStreamRequest(buffer="buffer", prefetch=65), "prefetch"),
        (buffer_pb2.SampleStreamRequest(buffer="buffer", num_batches=-1), "num_batches"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.SampleStream(request))
        assert info.value.code() == INVALID and info.value.details().startswith(field)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", chunk_bytes=10)))
    assert info.value.code() == INVALID and info.value.details().startswith("chunk_bytes")


def test_snapshot_refuses_a_buffer_that_moved_on(seeded, stub):
    added = seeded.stats().episodes_added
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", expect_episodes_added=added + 1)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details().startswith("expect_episodes_added")
    chunks = list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", expect_episodes_added=added)))
    assert chunks[0].episodes_added == added and chunks[-1].offset + len(chunks[-1].chunk) == chunks[0].total_bytes


def test_restore_rejects_garbage_and_corruption_and_keeps_the_buffer(seeded):
    before = snapshot_bytes(seeded)
    with pytest.raises(InvalidArgument, match="not a Rewind buffer snapshot"):
        seeded.restore(b"hello world" * 10)
    corrupt = bytearray(before)
    corrupt[len(corrupt) // 2] ^= 0xFF
    from rewind.errors import DataLoss

    with pytest.raises(DataLoss, match="sha256 mismatch"):
        seeded.restore(bytes(corrupt))
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        seeded.restore(before[:-100] + before[-32:])  # truncated
    assert snapshot_bytes(seeded) == before
    assert seeded.using("buffer").restore(before).episodes == 2


def test_load_larger_than_the_buffer_is_resource_exhausted(seeded):
    before = snapshot_bytes(seeded)
    with pytest.raises(ResourceExhausted, match="more than 2,000 transitions"):
        seeded.load([episode(10 + i, 500) for i in range(5)])
    assert snapshot_bytes(seeded) == before


def test_scalar_fields_are_invalid_argument_not_internal(seeded, stub):
    fields = {**episode(5, 20), "obs": torch.tensor(1.0)}
    with pytest.raises(grpc.RpcError) as info:
        stub.AddEpisode(add_request(fields))
    assert info.value.code() == INVALID and "episode.obs: shape [] lacks the leading (L,) dims" in info.value.details()
    request = buffer_pb2.LoadEpisodesRequest(buffer="buffer")
    encode_episode(fields, request.episodes.add())
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadEpisodes(iter([request]))
    assert info.value.code() == INVALID and "episodes[0].obs" in info.value.details()


def test_capture_ids_are_checked(seeded, stub):
    capture = stub.Capture(buffer_pb2.CaptureRequest(buffer="buffer"))
    for request, code, field in (
        (buffer_pb2.SnapshotRequest(buffer="test_buffer", capture_id=capture.capture_id), grpc.StatusCode.NOT_FOUND,
         "capture_id"),
        (buffer_pb2.SnapshotRequest(buffer="buffer", capture_id="nope"), grpc.StatusCode.NOT_FOUND, "capture_id"),
        (buffer_pb2.SnapshotRequest(buffer="buffer", capture_id=capture.capture_id, expect_episodes_added=1),
         INVALID, "expect_episodes_added"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Snapshot(request))
        assert info.value.code() == code and info.value.details().startswith(field)
    # Still there after the refusals, and streams exactly once.
    assert list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", capture_id=capture.capture_id)))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", capture_id=capture.capture_id)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method,kind", [("/rewind.buffer.v1.BufferService/GetStats", (False, False)),
                                         ("/rewind.buffer.v1.BufferService/SampleStream", (False, True)),
                                         ("/rewind.buffer.v1.BufferService/Restore", (True, False))])
def test_bytes_that_are_no_protobuf_are_invalid_not_internal(seeded, service, method, kind):
    from rewind.channel import make_channel

    before = seeded.stats()
    garbage = b"\xff\xff\xff\xff\x0f"  # a varint longer than protobuf allows
    with make_channel(service.address) as channel:
        identity = {"request_serializer": None, "response_deserializer": None}
        with pytest.raises(grpc.RpcError) as info:
            if kind == (False, False):
                channel.unary_unary(method, **identity)(garbage, timeout=5)
            elif kind == (False, True):
                next(channel.unary_stream(method, **identity)(garbage, timeout=5))
            else:
                channel.stream_unary(method, **identity)(iter([garbage]), timeout=5)
    assert info.value.code() == INVALID
    assert "request: not a valid message for" in info.value.details()
    assert seeded.stats() == before


def test_a_huge_echoed_value_still_gets_its_own_status(seeded, stub):
    """The status names the field; a value too long to echo whole is cut, so the answer is never lost."""
    with pytest.raises(grpc.RpcError) as info:
        stub.GetStats(buffer_pb2.GetStatsRequest(buffer="x" * 100_000))
    assert info.value.code() == INVALID
    assert info.value.details().startswith("buffer: is 100000 characters long")
    with pytest.raises(grpc.RpcError) as info:
        stub.Snapshot(buffer_pb2.SnapshotRequest(buffer="buffer", capture_id="c" * 100_000)).next()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("capture_id: ") and "more characters cut" in info.value.details()
    assert len(info.value.details()) < 2100
