"""The buffer core (no gRPC): layout, boundaries, FIFO eviction, readiness."""

from __future__ import annotations

import random

import pytest
import torch

from rewind.errors import FailedPrecondition
from rewind_buffer.episode_buffer import EpisodeBuffer
from rewind_buffer.settings import BufferSettings
from tests.support.episodes import check_batch_against, episode


def make(buffer_size=1000, batch_size=16, min_history=10, horizon=3) -> EpisodeBuffer:
    return EpisodeBuffer("buffer", BufferSettings(buffer_size, batch_size, min_history, horizon))


def test_layout_values_match_inserted_episodes():
    buf = make()
    eps = {i: episode(i, 50 + 10 * i) for i in range(5)}
    for ep in eps.values():
        buf.add(ep)
    for _ in range(20):
        b = buf.sample()
        check_batch_against((b.obs, b.action, b.reward, b.done), eps, horizon=3, batch_size=16)


def test_sequences_never_cross_boundaries_with_random_lengths_and_wraparound():
    rng = random.Random(0)
    buf = make(buffer_size=600, batch_size=32, min_history=0, horizon=4)
    stored: dict[int, dict] = {}
    for i in range(60):
        stored[i] = episode(i, rng.randint(5, 140))
        buf.add(stored[i])
        b = buf.sample()
        check_batch_against((b.obs, b.action, b.reward, b.done), stored, horizon=4, batch_size=32)
    assert buf.episodes_evicted > 0


def test_fifo_evicts_oldest_whole_episodes():
    buf = make(buffer_size=1000, batch_size=64, min_history=0, horizon=3)
    for i in range(4):
        buf.add(episode(i, 300))  # the fourth does not fit: episode 0 goes
    live = [eid for eid, _, _ in buf._writer.state_dict()["episodes"]]
    assert live == [1, 2, 3]
    assert buf.transitions == 900 and buf.num_eps == 3 and buf.episodes_evicted == 1
    seen = set()
    for _ in range(30):
        seen |= set((buf.sample().obs[0, :, 0] // 1000).long().tolist())
    assert seen == {1, 2, 3}, "an evicted episode (or a fragment of it) was sampled"
    buf.add(episode(4, 450))  # needs the space of episodes 1 and 2
    assert [eid for eid, _, _ in buf._writer.state_dict()["episodes"]] == [3, 4]
    assert buf.transitions == 750 and buf.episodes_evicted == 3


def test_ready_needs_min_history_transitions():
    buf = make(min_history=100)
    with pytest.raises(FailedPrecondition, match="min_history=100"):
        buf.sample()
    buf.add(episode(0, 60))
    assert not buf.ready()
    buf.add(episode(1, 40))
    assert buf.ready()


def test_same_seed_same_samples():
    a, b = make(), make()
    for i in range(3):
        a.add(episode(i, 40))
        b.add(episode(i, 40))
    for _ in range(5):
        assert torch.equal(a.sample().obs, b.sample().obs)


def test_cpu_storage_reported_without_cuda():
    buf = make()
    buf.add(episode(0, 20))
    stats = buf.stats()
    expected = "cpu" if not torch.cuda.is_available() else stats.device
    assert stats.device == expected
    # obs 3 + action 2 + reward + done float32, plus the int64 episode id.
    assert stats.bytes == 1000 * (4 * (3 + 2 + 1 + 1) + 8)


def test_a_load_writes_what_adding_its_episodes_one_by_one_writes_wrap_and_eviction_included():
    # After the first write, a load copies each episode straight into its rows (no concatenation first).
    rng = random.Random(3)
    one_by_one, loaded = (make(buffer_size=600, batch_size=8, min_history=0, horizon=2) for _ in range(2))
    eps = [episode(i, rng.randint(20, 140)) for i in range(40)]
    one_by_one.add(eps[0])
    loaded.add(eps[0])
    for first in range(1, 40, 7):  # loads of 7 episodes: they wrap around the 600 slots and evict
        for ep in eps[first:first + 7]:
            one_by_one.add(ep)
        loaded.load(eps[first:first + 7])
        a, b = one_by_one.export_state(copy=True), loaded.export_state(copy=True)
        assert a.writer == b.writer and (a.episodes_added, a.transitions) == (b.episodes_added, b.transitions)
        live = a.tensors["episode"] >= 0  # rows of stored episodes (the others hold what the allocation left)
        assert torch.equal(a.tensors["episode"], b.tensors["episode"]) and live.sum() == a.transitions
        for key, column in a.tensors.items():
            other = b.tensors[key]
            assert torch.equal(column[live], other[live]) if len(column) == len(live) else torch.equal(column, other)
        x, y = one_by_one.sample(), loaded.sample()  # the same generator state, the same draws
        assert torch.equal(x.obs, y.obs) and torch.equal(x.reward, y.reward)
    assert loaded.episodes_evicted > 0
