"""ShardedBufferClient against real buffer services: uniform sampling over the union (and the Reverb-style
per-server rule failing the same test), routing that is even and reproducible, the BufferClient surface,
and a shard lost mid-stream that rejoins only once restored.
"""

from __future__ import annotations

import time

import pytest
import torch

from rewind import BufferClient, ShardedBufferClient
from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_messages import decode_batch
from rewind.errors import InvalidArgument
from rewind.sharded_buffer_client import ANSWERING, LIVE, rendezvous_score
from rewind_buffer.server import serve
from tests.support.configs import SMALL
from tests.support.episodes import episode
from tests.support.processes import free_port, wait_for

SHARD = SMALL.replace(port=0, buffer_size=20_000, min_history=0, batch_size=8, horizon=3)
STEPS = 12
# The chi-square statistic's 99.9th percentile with 39 degrees of freedom (40 episodes), from the
# standard tables: a uniform sampler exceeds it once in a thousand runs.
CHI2_39_P999 = 72.05


@pytest.fixture
def shards():
    hosts = [serve(SHARD) for _ in range(3)]
    yield hosts
    for host in hosts:
        host.stop(grace_s=0.5)


def episode_ids(batch) -> list[int]:
    """The episode each sequence of a batch came from (obs encodes episode id x 1000 + step)."""
    return (batch[0][0, :, 0] // 1000).long().tolist()


def chi_square(counts: dict[int, int], episodes: list[int]) -> float:
    total = sum(counts.values())
    expected = total / len(episodes)
    return sum((counts.get(e, 0) - expected) ** 2 / expected for e in episodes)


def test_batches_are_uniform_over_the_union_of_unequal_shards(shards):
    # Shards of 10 and 30 episodes (1:3): every episode should be drawn equally often.
    small, large = (BufferClient(h.address) for h in shards[:2])
    small.load([episode(e, STEPS) for e in range(10)])
    large.load([episode(e, STEPS) for e in range(10, 40)])
    with ShardedBufferClient([h.address for h in shards[:2]], seed=7) as sharded:
        counts: dict[int, int] = {}
        for _ in range(200):
            for e in episode_ids(sharded.sample()):
                counts[e] = counts.get(e, 0) + 1
        with sharded.batches(prefetch=4, num_batches=200) as stream:
            for batch in stream:
                assert batch[0].shape == (4, 8, 3)
                for e in episode_ids(batch):
                    counts[e] = counts.get(e, 0) + 1
    assert sum(counts.values()) == 400 * 8
    assert chi_square(counts, list(range(40))) < CHI2_39_P999

    # Reverb's rule, each server an equal share of every batch: the small shard's episodes are oversampled.
    reverb: dict[int, int] = {}
    for _ in range(400):
        for client in (small, large):
            for e in episode_ids(decode_batch(client.sample_message(4))):
                reverb[e] = reverb.get(e, 0) + 1
    assert chi_square(reverb, list(range(40))) > 10 * CHI2_39_P999
    small.close(), large.close()


def test_routing_spreads_episodes_evenly_and_reproducibly(shards):
    addresses = [h.address for h in shards]
    with ShardedBufferClient(addresses, writer="collector-3", routing_seed=11) as sharded:
        # Within 10 % of even over 30,000 keys (a binomial's spread there is under 3 %, so this never
        # fails by chance whatever ports the shards got).
        picks = [sharded.route(i).address for i in range(30_000)]
        assert all(abs(picks.count(a) - 10_000) <= 1_000 for a in addresses), [picks.count(a) for a in addresses]
        for start in range(0, 1200, 200):
            sharded.load([episode(e, 4) for e in range(start, start + 200)])
        held = [BufferClient(a).stats().episodes for a in addresses]
        assert held == [picks[:1200].count(a) for a in addresses]  # each episode where its key routes it
        # A shard is known by its place in the list: the same run on other hosts routes alike.
        same = ShardedBufferClient([f"10.255.0.{i}:50051" for i in range(3)], writer="collector-3", routing_seed=11)
        assert [same.route(i).index for i in range(300)] == [sharded.route(i).index for i in range(300)]
        other = ShardedBufferClient(addresses, writer="collector-3", routing_seed=12)
        assert [other.route(i).index for i in range(300)] != [sharded.route(i).index for i in range(300)]
        other.close()
        # Losing a shard moves only its own episodes: the others keep theirs (rendezvous hashing).
        before = [sharded.route(i).address for i in range(300)]
        sharded.drop(sharded.shards[0], "test")
        after = [sharded.route(i).address for i in range(300)]
        assert all(a == b for a, b in zip(before, after, strict=True) if a != addresses[0])
        assert addresses[0] not in after
        same.close()


def test_each_episode_carries_its_routing_key(shards):
    # The shard that holds an episode is the one its key picks among the live shards.
    addresses = [h.address for h in shards]
    with ShardedBufferClient(addresses, writer="w", routing_seed=5) as sharded:
        for e in range(30):
            sharded.add(episode(e, 4))
    picked = [addresses[max(range(3), key=lambda i, e=e: rendezvous_score(5, "w", e, i))] for e in range(30)]
    for address in addresses:
        with BufferClient(address) as shard:
            held = {int(b) for b in episode_ids(decode_batch(shard.sample_message(400)))} if shard.num_eps else set()
            # Episode e was this writer's index e: the shard its key picks holds it, and only that one.
            assert held == {e for e in range(30) if picked[e] == address}
    with BufferClient(addresses[0]) as plain, pytest.raises(InvalidArgument, match=r"routing\.writer: empty"):
        plain.add(episode(99, 4), routing=buffer_pb2.RoutingKey(seed=5, index=1))


def test_the_surface_of_a_buffer_client(shards):
    addresses = [h.address for h in shards]
    with ShardedBufferClient(",".join(addresses), writer="w", seed=3) as sharded:
        assert sharded.num_eps == 0 and sharded.capacity == 3 * 20_000
        for e in range(9):
            sharded.add(episode(e, STEPS))
        stats = sharded.stats()
        assert (stats.episodes, stats.transitions) == (9, 9 * STEPS)
        assert stats.sampleable_episodes == 9 and stats.sampleable_starts == 9 * (STEPS - 3)
        assert sharded.ready() and sharded.shards_available == 3
        state = sharded.state_dict()
        first = [sharded.draw(sharded.live, 8) for _ in range(10)]
        sharded.load_state_dict(state)
        again = [sharded.draw(sharded.live, 8) for _ in range(10)]
        assert first == again and len({tuple(split) for split in first}) > 1  # saved, and not constant
        assert all(sum(split) == 8 for split in first)
    with pytest.raises(InvalidArgument, match="a shard is named twice"):
        ShardedBufferClient([addresses[0], addresses[0]])


def test_a_shard_lost_mid_stream_leaves_no_gap_and_rejoins_only_once_restored(shards, tmp_path):
    port = free_port()
    victim = serve(SHARD.replace(port=port))
    addresses = [shards[0].address, shards[1].address, victim.address]
    with ShardedBufferClient(addresses, writer="w", seed=1) as sharded:
        sharded.load([episode(e, STEPS) for e in range(60)])
        with BufferClient(victim.address) as direct:
            held = direct.stats().episodes
            assert held > 0
            direct.snapshot(tmp_path / "victim.snapshot")
        stream = sharded.batches(prefetch=4)
        gaps, last = [], time.monotonic()
        for i in range(60):
            if i == 20:
                victim.stop(grace_s=0)  # the shard dies mid-stream
            batch = next(stream)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            assert batch[0].shape == (4, 8, 3)  # full batches throughout
        assert max(gaps[21:]) <= 1.0, max(gaps[21:])
        assert sharded.shards_available == 2
        assert all(e < 60 for b in [next(stream)] for e in episode_ids(b))

        victim = serve(SHARD.replace(port=port))  # back, but empty: not a shard of the run yet
        wait_for(lambda: sharded.shards[2].state == ANSWERING, "the restarted shard to answer a probe")
        assert sharded.shards_available == 2
        with BufferClient(victim.address) as direct:
            direct.restore(tmp_path / "victim.snapshot")  # as the trainer restores it from the last cut
        sharded.readmit(victim.address)
        assert sharded.shards[2].state == LIVE and sharded.shards_available == 3
        drawn = {e for _ in range(30) for e in episode_ids(sharded.sample())}
        with BufferClient(victim.address) as direct:
            assert direct.stats().batches_sampled > 0  # it has weight again
        assert len(drawn) > 40
        stream.close()
    victim.stop(grace_s=0)


def test_a_stream_fails_with_the_reason_when_the_buffer_cannot_sample(shards):
    with ShardedBufferClient([h.address for h in shards], writer="w") as sharded:
        from rewind.errors import FailedPrecondition

        with pytest.raises(FailedPrecondition, match="no shard holds an episode yet"):
            next(iter(sharded.batches(num_batches=1)))


def test_sample_sequences_samples_exactly_the_counts_asked(shards):
    with BufferClient(shards[0].address) as client:
        client.load([episode(e, STEPS) for e in range(5)])
        replies = list(client.sample_sequences(iter([3, 0, 5])))
        assert [r.batch.obs.shape[1] for r in replies] == [3, 0, 5]
        assert all(r.batch.sampleable_episodes == 5 for r in replies)
        assert torch.equal(torch.tensor(decode_batch(client.sample_message(2))[0].shape), torch.tensor([4, 2, 3]))
        with pytest.raises(InvalidArgument, match="sequences: 70000 is outside"):
            client.sample_message(70_000)


def test_a_write_from_an_older_generation_is_refused_and_changes_nothing(shards, tmp_path):
    from rewind.errors import FailedPrecondition

    with BufferClient(shards[0].address) as client:
        client.add(episode(0, STEPS), generation=3)
        assert client.stats().generation == 3
        client.add(episode(1, STEPS))  # unstamped writes pass, as before generations existed
        client.snapshot(tmp_path / "gen3.snapshot")
        client.add(episode(2, STEPS), generation=4)  # a resumed run's first write raises the fence
        before = client.stats()
        with pytest.raises(FailedPrecondition, match="stamped with generation 3, but buffer 'buffer' belongs to "
                                                     "generation 4"):
            client.add(episode(3, STEPS), generation=3)
        with pytest.raises(FailedPrecondition, match="generation 3, but .* generation 4"):
            client.load([episode(4, STEPS), episode(5, STEPS)], generation=3)
        with pytest.raises(InvalidArgument):
            client.add(episode(8, 2), generation=9)  # too short: refused, and the generation stays 4
        after = client.stats()
        assert (after.episodes, after.episodes_added, after.generation) == (3, 3, 4) == (
            before.episodes, before.episodes_added, before.generation)
        # A restore keeps the snapshot's generation, or starts the one it is given (a resume's).
        assert client.restore(tmp_path / "gen3.snapshot").generation == 3
        assert client.restore(tmp_path / "gen3.snapshot", generation=5).generation == 5
        with pytest.raises(FailedPrecondition, match="generation 4, but .* generation 5"):
            client.add(episode(6, STEPS), generation=4)
    # The sharded client stamps every write with its generation.
    with ShardedBufferClient([shards[0].address], writer="old", generation=4) as old:
        with pytest.raises(FailedPrecondition, match="generation 4"):
            old.add(episode(7, STEPS))
        assert old.shards_available == 1  # a refused write is the writer's problem, not a lost shard


def test_sampling_waits_for_a_lost_shard_that_held_every_episode_until_it_is_readmitted(shards, tmp_path):
    import threading

    from rewind.errors import Unavailable

    port = free_port()
    victim = serve(SHARD.replace(port=port))
    with BufferClient(victim.address) as direct:
        direct.load([episode(e, STEPS) for e in range(5)])  # only the victim holds episodes
        direct.snapshot(tmp_path / "victim.snapshot")
    with ShardedBufferClient([shards[0].address, victim.address], writer="w", seed=1, timeout=30) as sharded, \
            ShardedBufferClient([shards[0].address, victim.address], writer="w", seed=1, timeout=1) as impatient:
        sharded.refresh()
        impatient.refresh()
        victim.stop(grace_s=0)
        # A learner with a short timeout is told which shard it waits for.
        with pytest.raises(Unavailable, match=f"did not come back within 1 s: {victim.address}"):
            impatient.sample()
        got: list = []
        sampler = threading.Thread(target=lambda: got.append(sharded.sample()), daemon=True)
        sampler.start()
        wait_for(lambda: sharded.shards[1].state != LIVE, "the lost shard to be dropped")
        victim = serve(SHARD.replace(port=port))  # back, but empty
        wait_for(lambda: sharded.shards[1].state == ANSWERING, "the restarted shard to answer a probe")
        assert got == []  # answering is not enough: the learner still waits
        with BufferClient(victim.address) as direct:
            direct.restore(tmp_path / "victim.snapshot")
        sharded.readmit(victim.address)
        sampler.join(timeout=30)
        assert len(got) == 1 and set(episode_ids(got[0])) <= set(range(5)) and got[0][0].shape == (4, 8, 3)
    victim.stop(grace_s=0)
