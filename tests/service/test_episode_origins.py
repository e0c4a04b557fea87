"""Every stored episode records where it came from (its writer, index, generation and policy version), and
GetStats summarises them per writer: through adds, eviction, a checkpoint and its restore, shards, bad input
and the writer bound, on real buffer and checkpoint services."""

from __future__ import annotations

import io
import re

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rewind import BufferClient, ShardedBufferClient, buffer_source
from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_messages import encode_episode
from rewind.errors import DataLoss, InvalidArgument, ResourceExhausted
from rewind_buffer import origins, snapshot
from rewind_buffer.metrics import BufferCollector
from rewind_buffer.server import serve
from tests.support.configs import SMALL
from tests.support.episodes import episode

STEPS = 50


def key(writer: str, index: int) -> buffer_pb2.RoutingKey:
    return buffer_pb2.RoutingKey(seed=1, writer=writer, index=index)


def table(writers) -> dict[str, tuple[int, ...]]:
    """writer -> (stored, added, newest index, generation, newest, oldest and latest policy version)."""
    rows = writers.values() if isinstance(writers, dict) else writers
    return {w.writer: (w.episodes, w.episodes_added, w.newest_index, w.generation, w.newest_policy_version,
                       w.oldest_policy_version, w.latest_policy_version) for w in rows}


def add(client: BufferClient, eid: int, writer: str = "", index: int = 0, generation: int = 0, version: int = 0):
    client.add(episode(eid, STEPS), routing=key(writer, index) if writer else None, generation=generation,
               policy_version=version)


@pytest.fixture
def six(client):
    """The buffer, room for six episodes of STEPS transitions."""
    client.reset(buffer_size=6 * STEPS, min_history=0)
    return client


def test_stats_summarise_each_writer_and_eviction_drops_the_oldest_origins(six):
    add(six, 0, "a", 0, generation=1, version=3)
    add(six, 1, "b", 0, generation=2, version=7)
    add(six, 2, "a", 1, generation=2, version=5)
    add(six, 3)  # no routing key, no generation, random actions
    assert table(six.writers()) == {"": (1, 1, 0, 0, 0, 0, 0), "a": (2, 2, 1, 2, 5, 3, 5), "b": (1, 1, 0, 2, 7, 7, 7)}
    assert [w.writer for w in six.stats().writers] == ["", "a", "b"]

    for i, version in enumerate((8, 9, 10, 11), start=1):  # 8 episodes for 6 places: a's first and b's first go
        add(six, 10 + i, "b", i, generation=2, version=version)
    assert six.stats().episodes_evicted == 2
    assert table(six.writers()) == {"": (1, 1, 0, 0, 0, 0, 0), "a": (1, 2, 1, 2, 5, 5, 5),
                                    "b": (4, 5, 4, 2, 11, 8, 11)}
    add(six, 20, "b", 5, generation=2, version=12)
    add(six, 21, "b", 6, generation=2, version=12)
    # Nothing of a's is stored any more: its counts and latest version stay, its stored versions read 0.
    assert table(six.writers()) == {"": (0, 1, 0, 0, 0, 0, 0), "a": (0, 2, 1, 2, 0, 0, 5),
                                    "b": (6, 7, 6, 2, 12, 8, 12)}


def test_bad_policy_versions_are_invalid_argument_naming_the_field_and_store_nothing(six, stub):
    add(six, 0, "a", 0, generation=1, version=3)
    before = six.stats()
    with pytest.raises(InvalidArgument, match=r"^policy_version: -1 is negative"):
        six.add(episode(1, STEPS), routing=key("a", 1), policy_version=-1)
    with pytest.raises(InvalidArgument, match=r"^policy_versions: 1 versions for 2 episodes"):
        six.load([episode(1, STEPS), episode(2, STEPS)], policy_versions=[4])
    episodes = [encode_episode(episode(e, STEPS)) for e in (1, 2)]
    for versions, message in (([4], r"^policy_versions: 1 versions for the message's 2 episodes"),
                              ([4, -2], r"^policy_versions\[1\]: -2 is negative"),
                              ([4, 5, 6], r"^policy_versions: 3 versions")):
        request = buffer_pb2.LoadEpisodesRequest(buffer="buffer", episodes=episodes, policy_versions=versions)
        with pytest.raises(grpc.RpcError) as info:
            stub.LoadEpisodes(iter([request]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(message, info.value.details()), info.value.details()
    after = six.stats()
    assert (after.episodes_added, table(after.writers)) == (before.episodes_added, table(before.writers))
    # One version per episode of each message: a load's versions go with its episodes.
    six.load([episode(1, STEPS), episode(2, STEPS)], routing=[key("b", 0), key("b", 1)], policy_versions=[4, 6])
    assert table(six.writers())["b"] == (2, 2, 1, 0, 6, 4, 6)


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_a_capture_keeps_the_origins_through_a_checkpoint_and_its_restore(ckpt, service, six):
    add(six, 0, "a", 0, generation=1, version=3)
    add(six, 1, "b", 0, generation=1, version=7)
    add(six, 2, "a", 1, generation=1, version=5)
    captured = six.capture(expect_episodes_added=3)
    at_capture = table(six.writers())
    add(six, 3, "a", 2, generation=1, version=9)  # the run moves on before the save
    c = ckpt.save("agent", "run-1", 150, {}, buffers=[
        buffer_source(service.address, "buffer", capture_id=captured.capture_id)]).checkpoint
    whole = ckpt.save("agent", "run-1", 151, {}, buffers=[
        buffer_source(service.address, "buffer", blocks=False)]).checkpoint
    after = table(six.writers())
    assert after != at_capture

    ckpt.restore_buffers(c, generation=2)  # block index and blocks, through the checkpoint service
    assert table(six.writers()) == at_capture
    add(six, 4, "a", 3, generation=2, version=10)  # and it goes on from there
    assert table(six.writers())["a"] == (3, 3, 3, 2, 10, 3, 10)
    restored = six.using("copy").restore(ckpt.read(whole, "buffer.snapshot"))  # a whole snapshot
    assert table(restored.writers) == after


def snapshot_of(client: BufferClient) -> tuple[dict, dict]:
    blob = io.BytesIO()
    client.snapshot(blob)
    return snapshot.decode(blob.getvalue())


def encoded(header: dict, tensors: dict) -> bytes:
    return b"".join(bytes(p) for p in snapshot.encode(header, tensors)[1])


def test_snapshots_without_origins_restore_with_every_episode_under_writer_empty(six):
    for eid in range(3):
        add(six, eid)
    header, tensors = snapshot_of(six)
    assert "origins" not in header  # a buffer of unattributed episodes writes what earlier releases wrote
    assert table(six.using("copy").restore(encoded(header, tensors)).writers) == {"": (3, 3, 0, 0, 0, 0, 0)}

    add(six, 3, "a", 0, generation=1, version=4)
    header, tensors = snapshot_of(six)
    assert header["origins"] == {"writers": [["", 3, 0, 0, 0], ["a", 1, 0, 1, 4]],
                                 "episodes": [[0, 0, 0, 0]] * 3 + [[1, 0, 1, 4]]}
    del header["origins"]  # as a release before origins wrote it
    assert table(six.using("old").restore(encoded(header, tensors)).writers) == {"": (4, 4, 0, 0, 0, 0, 0)}


@pytest.mark.parametrize(("path", "value", "message"), [
    (("episodes", 0, 0), 7, r"snapshot\.origins\.episodes\[0\]: writer 7"),
    (("episodes",), [], r"snapshot\.origins\.episodes: a list of one entry per stored episode \(2\)"),
    (("writers", 1, 4), 9, r"snapshot\.origins\.writers\[1\]: 2 episodes stored of 2 added, or its latest"),
    (("writers", 0, 3), 5, r"snapshot\.origins\.writers\[0\]: generation 5 passes the buffer's 2"),
    (("writers", 1, 0), "a", r"snapshot\.origins\.writers\[1\]: \[writer \(each once"),
    (("writers", 0, 1), 10, r"snapshot\.origins\.writers: more episodes added than the buffer's 3"),
])
def test_inconsistent_origins_in_a_snapshot_are_data_loss_naming_them(client, path, value, message):
    client.reset(buffer_size=2 * STEPS, min_history=0)  # two places: a's episode is evicted by b's
    add(client, 0, "a", 0, generation=1, version=3)
    add(client, 1, "b", 0, generation=2, version=7)
    add(client, 2, "b", 1, generation=2, version=8)
    header, tensors = snapshot_of(client)
    assert header["origins"] == {"writers": [["a", 1, 0, 1, 3], ["b", 2, 1, 2, 8]],
                                 "episodes": [[1, 0, 2, 7], [1, 1, 2, 8]]}
    *inner, last = path
    target = header["origins"]
    for step in inner:
        target = target[step]
    target[last] = value
    before = table(client.writers())
    with pytest.raises(DataLoss, match=message):
        client.restore(encoded(header, tensors))
    assert table(client.writers()) == before


def test_a_sharded_client_merges_the_writers_of_its_shards(client):
    hosts = [serve(SMALL.replace(port=0, min_history=0)) for _ in range(2)]
    addresses = [h.address for h in hosts]
    try:
        # Routing seed 1 sends c0's indices to shards 0 1 0 0 1 0 and c1's to 1 0 1 1.
        with ShardedBufferClient(addresses, writer="c0", routing_seed=1, generation=1) as c0, \
                ShardedBufferClient(addresses, writer="c1", routing_seed=1, generation=1) as c1:
            for version in (1, 1, 2, 3, 3, 4):
                c0.add(episode(0, 20), policy_version=version)
            c1.load([episode(1, 20)] * 4, policy_versions=[2, 6, 5, 5])
            merged = table(c0.writers())
            shards = [table(s.writers) for s in c0.shard_stats().values()]
            assert table(c1.stats().writers) == merged
        assert shards == [{"c0": (4, 4, 5, 1, 4, 1, 4), "c1": (1, 1, 1, 1, 6, 6, 6)},
                          {"c0": (2, 2, 4, 1, 3, 1, 3), "c1": (3, 3, 3, 1, 5, 2, 5)}]
        # Counts summed; newest index, generation and newest version the largest, oldest the smallest; the latest
        # version is that of the writer's newest episode (c1's index 3, on shard 1), not the largest (6).
        assert merged == {"c0": (6, 6, 5, 1, 4, 1, 4), "c1": (4, 4, 3, 1, 6, 2, 5)}
    finally:
        for host in hosts:
            host.stop(grace_s=0.5)


def test_past_the_writer_bound_a_new_writer_is_refused_until_one_has_nothing_stored(six, monkeypatch):
    monkeypatch.setattr(origins, "MAX_WRITERS", 2)
    add(six, 0, "a", 0, version=1)
    for i in range(4):
        add(six, 1 + i, "b", i, version=2)
    with pytest.raises(ResourceExhausted, match=r"^routing\.writer: 'c' would be one writer too many: .* at most 2 "):
        add(six, 9, "c", 0, version=3)
    assert six.stats().episodes_added == 5
    add(six, 5, "b", 4, version=2)
    add(six, 6, "b", 5, version=2)  # a's episode is evicted: a has nothing stored now
    add(six, 7, "c", 0, version=3)  # c takes a's place in the table
    assert table(six.writers()) == {"b": (5, 6, 5, 0, 2, 2, 2), "c": (1, 1, 0, 0, 3, 3, 3)}


def test_metrics_give_each_writers_episodes_and_latest_policy_version(service, six):
    add(six, 0, "a", 0, version=3)
    add(six, 1, "a", 1, version=4)
    add(six, 2)
    registry = CollectorRegistry()
    registry.register(BufferCollector(service.bindings[0].servicer.registry))
    text = generate_latest(registry).decode()
    assert 'rewind_buffer_writer_episodes{buffer="buffer",writer="a"} 2.0' in text
    assert 'rewind_buffer_writer_episodes{buffer="buffer",writer=""} 1.0' in text
    assert 'rewind_buffer_writer_policy_version{buffer="buffer",writer="a"} 4.0' in text
