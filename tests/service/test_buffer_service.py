"""The buffer service over real gRPC on 127.0.0.1, through the SDK and raw stubs."""

from __future__ import annotations

import io
import threading

import grpc
import pytest
import torch
from tensordict import TensorDict

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_messages import encode_episode
from rewind.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.support.episodes import check_batch_against, episode


def fill(client: BufferClient, n: int = 4, length: int = 40, first: int = 0) -> dict[int, dict]:
    eps = {first + i: episode(first + i, length) for i in range(n)}
    for ep in eps.values():
        client.add(ep)
    return eps


def test_add_returns_num_eps_and_sample_has_td_mpc2_layout(client):
    eps = {}
    for i in range(3):
        eps[i] = episode(i, 40)
        assert client.add(eps[i]) == i + 1
    assert client.num_eps == 3 and client.capacity == 2000 and client.ready()
    for _ in range(5):
        check_batch_against(client.sample(), eps, horizon=3, batch_size=8)


def test_add_accepts_tensordict(client):
    ep = episode(0, 120)
    assert client.add(TensorDict(ep, batch_size=[120])) == 1
    check_batch_against(client.sample(), {0: ep}, horizon=3, batch_size=8)


def test_load_many_from_stacked_tensordict(client):
    eps = {i: episode(i, 30) for i in range(6)}
    stacked = TensorDict({k: torch.stack([e[k] for e in eps.values()]) for k in eps[0]}, batch_size=[6, 30])
    assert client.load(stacked) == 6
    stats = client.stats()
    assert (stats.episodes, stats.transitions, stats.episodes_added) == (6, 180, 6)
    check_batch_against(client.sample(), eps, horizon=3, batch_size=8)


def test_load_splits_across_messages_under_the_limit(client):
    # 4 MiB limit; 10 episodes of ~1 MiB each need several messages.
    big = [dict(episode(i, 40), obs=torch.full((40, 6500), float(i))) for i in range(10)]
    assert client.load(big) == 10
    assert client.stats().transitions == 400


def test_named_buffers_are_independent(client):
    test = client.using("test_buffer")
    fill(client, 3)
    assert test.num_eps == 0 and not test.ready()
    fill(test, 3, first=50)
    obs = test.sample()[0]
    assert set((obs[0, :, 0] // 1000).long().tolist()) <= {50, 51, 52}
    names = [b.name for b in client.list_buffers()]
    assert names == ["buffer", "test_buffer"]
    extra = client.using("extra")
    stats = extra.create(buffer_size=500, horizon=5)
    assert (stats.settings.buffer_size, stats.settings.horizon, stats.settings.batch_size) == (500, 5, 8)


def test_fifo_eviction_through_the_service(client):
    fill(client, 5, length=500)  # capacity 2000: episode 0 is evicted
    stats = client.stats()
    assert (stats.episodes, stats.transitions, stats.episodes_evicted) == (4, 2000, 1)
    seen = set()
    for _ in range(20):
        seen |= set((client.sample()[0][0, :, 0] // 1000).long().tolist())
    assert seen == {1, 2, 3, 4}


def test_stats_report_schema_device_and_bytes(client):
    assert client.stats().device == ""  # lazily allocated
    fill(client, 1)
    s = client.stats()
    assert s.device == "cpu"
    assert s.bytes == 2000 * (4 * 7 + 8)
    assert [(f.name, list(f.shape)) for f in s.schema] == [("obs", [3]), ("action", [2]), ("reward", []), ("done", [])]


def test_stream_values_and_sequence_numbers(client):
    eps = fill(client, 4)
    client.sample()
    with client.batches(prefetch=3, num_batches=25) as stream:
        got = list(stream)
    assert len(got) == 25
    for batch in got:
        check_batch_against(batch, eps, horizon=3, batch_size=8)
    assert client.stats().batches_sampled == 26


def test_stream_matches_unary_sampling_order(service):
    # A restored twin streams exactly the batches the original samples one by one.
    a = BufferClient(service.address)
    fill(a, 4)
    snap = io.BytesIO()
    a.snapshot(snap)
    twin = a.using("twin")
    twin.restore(snap.getvalue())
    unary = [a.sample() for _ in range(5)]
    with twin.batches(prefetch=4, num_batches=5) as stream:
        streamed = list(stream)
    for u, s in zip(unary, streamed, strict=True):
        for x, y in zip(u, s, strict=True):
            assert torch.equal(x, y)
    a.close()


def test_sampling_before_ready_is_failed_precondition(client, stub):
    fill(client, 1, length=50)  # 50 < min_history 100
    with pytest.raises(FailedPrecondition, match="min_history=100"):
        client.sample()
    with pytest.raises(FailedPrecondition, match="not ready"):
        next(iter(client.batches(num_batches=1)))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.SampleStream(buffer_pb2.SampleStreamRequest(buffer="buffer")))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_buffer_is_not_found(client):
    with pytest.raises(NotFound, match="'nope'"):
        client.using("nope").add(episode(0, 10))
    with pytest.raises(NotFound, match="buffer"):
        client.using("nope").stats()


def test_snapshot_restore_round_trip_samples_exactly_as_before(client, tmp_path):
    eps = fill(client, 5, length=60)
    client.sample()
    path = tmp_path / "buffer.snap"
    size = client.snapshot(path)
    assert size == path.stat().st_size > 0
    expected = [client.sample() for _ in range(4)]
    restored = client.using("restored")
    stats = restored.restore(path)
    assert (stats.episodes, stats.transitions, stats.batches_sampled, stats.episodes_added) == (5, 300, 1, 5)
    for batch in expected:
        got = restored.sample()
        check_batch_against(got, eps, horizon=3, batch_size=8)
        for x, y in zip(batch, got, strict=True):
            assert torch.equal(x, y)
    # Restoring over an existing buffer replaces it, counters and all.
    client.restore(path)
    assert client.stats().batches_sampled == 1


def test_snapshot_restore_after_eviction_keeps_fifo_state(client, tmp_path):
    fill(client, 6, length=450)  # evicts two
    path = tmp_path / "s.snap"
    client.snapshot(path)
    restored = client.using("r")
    restored.restore(path)
    restored.add(episode(9, 450))
    client.add(episode(9, 450))
    a, b = client.stats(), restored.stats()
    assert (a.episodes, a.episodes_evicted) == (b.episodes, b.episodes_evicted) == (4, 3)
    for _ in range(3):
        assert all(torch.equal(x, y) for x, y in zip(client.sample(), restored.sample(), strict=True))


def test_snapshot_of_empty_buffer_restores_empty(client, tmp_path):
    path = tmp_path / "empty.snap"
    client.snapshot(path)
    stats = client.using("copy").restore(path)
    assert (stats.episodes, stats.device) == (0, "")


def test_stream_deadline_stops_the_server_side_producer(client, stub):
    fill(client, 4)
    with pytest.raises(grpc.RpcError) as info:
        for _ in stub.SampleStream(buffer_pb2.SampleStreamRequest(buffer="buffer", prefetch=2), timeout=0.3):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for thread in threading.enumerate():
        if thread.name.startswith("sample-buffer"):
            thread.join(timeout=10)
            assert not thread.is_alive(), "producer kept sampling after the deadline"


def test_closing_a_stream_cancels_it(service):
    client = BufferClient(service.address, timeout=0.2)
    fill(client, 4)
    stream = client.batches(prefetch=1)
    next(stream)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    client.close()


def test_add_reports_num_episodes_and_the_new_episode_id(stub):
    for i in range(3):
        request = buffer_pb2.AddEpisodeRequest(buffer="buffer")
        encode_episode(episode(i, 20), request.episode)
        response = stub.AddEpisode(request)
        assert (response.num_episodes, response.episode_id) == (i + 1, i)


# -- ResetBuffer and DeleteBuffer ------------------------------------------------


def test_reset_empties_a_buffer_with_new_settings_and_reports_what_it_dropped(client):
    client.load([episode(i, 40) for i in range(3)])
    stats, dropped = client.reset(batch_size=4, horizon=2, min_history=0)
    assert dropped == 3
    assert (stats.episodes, stats.transitions, stats.episodes_added, stats.device) == (0, 0, 0, "")
    assert (stats.settings.batch_size, stats.settings.horizon, stats.settings.min_history,
            stats.settings.buffer_size) == (4, 2, 0, 2000)  # unset buffer_size takes the service's default
    client.add(episode(7, 30))
    obs, action, _, _ = client.sample()  # ready at once: min_history 0 was honoured
    assert obs.shape == (3, 4, 3) and action.shape == (2, 4, 2)
    assert client.using("test_buffer").stats().settings.batch_size == 8  # the other buffer is untouched


def test_reset_creates_a_missing_buffer_and_keeps_the_service_defaults_when_asked_for_none(client):
    stats, dropped = client.using("fresh").reset()
    assert dropped == 0 and stats.name == "fresh"
    assert (stats.settings.batch_size, stats.settings.min_history, stats.settings.horizon) == (8, 100, 3)
    assert "fresh" in [b.name for b in client.list_buffers()]


def test_a_bad_reset_is_invalid_and_changes_nothing(client):
    client.add(episode(0, 40))
    with pytest.raises(InvalidArgument, match="min_history: 5000 exceeds buffer_size 2000"):
        client.reset(min_history=5000)
    with pytest.raises(InvalidArgument, match="buffer: '../x' is not allowed"):
        client.using("../x").reset()
    with pytest.raises(InvalidArgument, match="buffer: 'a..b' is not allowed"):  # it could never be checkpointed
        client.using("a..b").create()
    assert client.stats().episodes == 1 and "a..b" not in [b.name for b in client.list_buffers()]


def test_delete_removes_a_buffer_and_a_second_delete_is_not_found(client):
    client.add(episode(0, 40))
    other = client.using("test_buffer")
    assert other.delete() == 0
    assert client.delete() == 1
    assert client.list_buffers() == []
    with pytest.raises(NotFound, match="no buffer named 'buffer'"):
        client.delete()
    with pytest.raises(NotFound):
        client.add(episode(1, 40))
    client.create()  # the name is free again
    assert client.stats().episodes == 0
