"""The rate limiter in a real buffer service: the ratio held both ways, waits that end, health answering
throughout, stops that do not wait for it, restores, pauses, GetStats and /metrics.

Each side is driven one step at a time: a test waits (polling GetStats, with a deadline) until the other
side is held back, checks the counts, then lets one more call through. No fixed sleeps.
"""

from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest

from rewind import BufferClient
from rewind.channel import make_channel
from rewind.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from rewind.health import check
from rewind_buffer.server import serve
from tests.support.configs import SMALL
from tests.support.episodes import episode
from tests.support.processes import wait_for

# 0.5 sequences per transition after 20 transitions; window [10 - 30, 10 + 30] = [-20, 40]; batches of 4.
LIMITED = SMALL.replace(port=0, buffer_size=10_000, batch_size=4, horizon=1, min_history=0, max_episode_length=10,
                        samples_per_insert=0.5, min_size_to_sample=20, error_buffer="30", limiter_max_waiting=2,
                        limiter_max_wait_s=30.0)
LENGTH = 10  # transitions per episode


@pytest.fixture
def limited():
    """A service whose buffers get LIMITED's limiter, plus a buffer `free` created without one."""
    host = serve(LIMITED)
    with BufferClient(host.address, "buffer", timeout=30.0) as client:
        client.using("free").create(samples_per_insert=0.0, min_size_to_sample=0, error_buffer="",
                                    max_episode_length=0)
        yield host, client
    host.stop(grace_s=0.5)


def limiter(client: BufferClient):
    return client.stats().rate_limiter


def held(client: BufferClient, side: str, count: int) -> bool:
    """One call of `side` waits, and the limiter has let `count` (transitions or sequences) through."""
    state = limiter(client)
    if side == "insert":
        return state.inserts_waiting == 1 and state.inserts >= count
    return state.samples_waiting == 1 and state.samples >= count


class Repeat:
    """Calls `call` again and again in a thread until stopped, counting the calls that returned."""

    def __init__(self, call) -> None:
        self.call, self.done, self.errors = call, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.call(self.done)
            except Exception as exc:  # the test reads what ended the thread
                self.errors.append(exc)
                return
            self.done += 1

    def finish(self) -> None:
        self.stop.set()


def test_a_fast_writer_is_held_to_the_ratio_by_a_slow_sampler(limited):
    host, client = limited
    writer = Repeat(lambda i: client.add(episode(i, LENGTH)))
    try:
        for sampled in range(0, 24, 8):
            # An episode of 10 goes in while (inserts + 10) x 0.5 - samples <= 40: inserts <= 80 + 2 x samples.
            expected = LENGTH * ((80 + 2 * sampled) // LENGTH)
            wait_for(lambda expected=expected: held(client, "insert", expected), f"the writer held at {expected}")
            state = limiter(client)
            assert (state.samples, state.inserts) == (sampled, expected)
            assert state.min_diff <= state.inserts * state.samples_per_insert - state.samples <= state.max_diff
            assert state.can_sample
            for _ in range(2):
                client.sample()  # 2 batches of 4 sequences buy 16 more transitions: one episode and a bit
        assert writer.errors == []
    finally:
        writer.finish()
        client.sample()  # releases the writer's last wait
        writer.thread.join(30)
    state = limiter(client)
    assert state.inserts_blocked_calls >= 3 and state.inserts_blocked_seconds > 0


def test_a_fast_sampler_is_held_to_the_ratio_by_a_slow_writer(limited):
    host, client = limited
    client.add(episode(0, LENGTH))
    client.add(episode(1, LENGTH))  # 20: min size reached
    sampler = Repeat(lambda i: client.sample())
    try:
        for inserted in range(20, 80, LENGTH):
            # A batch of 4 goes while inserts x 0.5 - samples - 4 >= -20, that is samples <= inserts / 2 + 16.
            expected = 4 * ((inserted // 2 + 16) // 4 + 1)
            wait_for(lambda expected=expected: held(client, "sample", expected), f"the sampler held at {expected}")
            state = limiter(client)
            assert (state.inserts, state.samples) == (inserted, expected)
            assert state.inserts * state.samples_per_insert - state.samples >= state.min_diff
            assert not state.can_sample and state.can_insert
            client.add(episode(inserted, LENGTH))
        assert sampler.errors == []
    finally:
        sampler.finish()
        client.add(episode(99, LENGTH))
        sampler.thread.join(30)
    assert limiter(client).samples_blocked_calls >= 6


def test_a_wait_ends_at_its_deadline_with_the_limiter_state_in_the_details(limited):
    host, client = limited
    client.add(episode(0, LENGTH))  # 10 of the 20 sampling waits for
    # The wait ends a tenth of the deadline early, so that the answer and its details arrive first.
    with BufferClient(host.address, "buffer", timeout=2.0) as impatient:
        with pytest.raises(DeadlineExceeded) as caught:
            impatient.sample()
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert "holds 10 of min_size_to_sample 20 transitions" in error.message
    assert error.metadata["side"] == "sample" and error.metadata["size"] == "10"
    assert error.metadata["min_size_to_sample"] == "20" and error.metadata["inserts"] == "10"
    state = client.stats()
    assert state.batches_sampled == 0 and state.rate_limiter.samples == 0  # nothing was sampled
    assert state.rate_limiter.samples_blocked_calls == 1 and state.rate_limiter.samples_blocked_seconds > 1.5


def test_a_stream_waits_at_most_the_service_maximum(tmp_path):
    host = serve(LIMITED.replace(limiter_max_wait_s=0.3))
    try:
        with BufferClient(host.address, "buffer", timeout=30.0) as client:
            client.add(episode(0, LENGTH))
            with pytest.raises(DeadlineExceeded, match="held this sample of 4 back for 0.3 s"):
                next(iter(client.batches(num_batches=1)))
    finally:
        host.stop(grace_s=0.5)


def test_waits_leave_health_and_other_buffers_alone_and_their_number_is_bounded(limited):
    host, client = limited
    other = client.using("free")
    client.add(episode(0, LENGTH))  # 10 of the 20 sampling waits for
    waiting = [Repeat(lambda i: client.sample()) for _ in range(2)]  # limiter_max_waiting = 2
    try:
        wait_for(lambda: limiter(client).samples_waiting == 2, "two samples waiting")
        with make_channel(host.address) as channel:
            assert check(channel) == "SERVING"
        other.add(episode(5, 200))  # another buffer: the waits hold neither its lock nor a slot of its own
        assert other.stats().transitions == 200
        with pytest.raises(ResourceExhausted, match="limiter_max_waiting: every slot"):
            client.sample()
    finally:
        for repeat in waiting:
            repeat.finish()
        host.stop(grace_s=5.0)  # the drain wakes the waiting calls: they end UNAVAILABLE
        for repeat in waiting:
            repeat.thread.join(10)
    assert [type(r.errors[0]) for r in waiting] == [Unavailable, Unavailable]
    assert "the buffer service is stopping" in waiting[0].errors[0].message


def test_a_reset_ends_the_waits_of_the_buffer_it_replaces(limited):
    host, client = limited
    waiter = Repeat(lambda i: client.sample())  # an empty buffer: the sample waits for min_size_to_sample
    wait_for(lambda: limiter(client).samples_waiting == 1, "a sample waiting")
    client.reset()
    waiter.thread.join(10)
    assert isinstance(waiter.errors[0], FailedPrecondition) and "was reset while this call waited" in str(
        waiter.errors[0])


def test_the_limiter_goes_into_the_snapshot_and_a_restore_keeps_or_rebases_it(limited, tmp_path):
    host, client = limited
    for i in range(6):
        client.add(episode(i, LENGTH))
    for _ in range(3):
        client.sample()
    before = limiter(client)
    assert (before.inserts, before.samples) == (60, 12)
    path = tmp_path / "buffer.snapshot"
    client.snapshot(path)

    fresh = serve(LIMITED)
    try:
        with BufferClient(fresh.address, "buffer", timeout=30.0) as copy:
            copy.restore(path)
            kept = limiter(copy)
            assert (kept.inserts, kept.samples, kept.min_diff, kept.max_diff) == (60, 12, -20.0, 40.0)
            # A restore with new settings starts the counts again, as if the 60 came in at the new ratio.
            copy.restore(path, rate_limiter={"samples_per_insert": 1.0, "error_buffer": "-5,100"})
            rebased = limiter(copy)
            assert (rebased.samples_per_insert, rebased.min_diff, rebased.max_diff) == (1.0, -5.0, 100.0)
            assert (rebased.inserts, rebased.samples) == (60, 40)  # 1.0 x (60 - 20) sampled: error 20
            assert copy.stats().settings.samples_per_insert == 1.0
    finally:
        fresh.stop(grace_s=0.5)


def test_pausing_lets_a_preload_through_and_resuming_does_not_hold_inserts_back(limited):
    host, client = limited
    stats = client.set_rate_limiter(paused=True)
    assert stats.rate_limiter.paused
    client.load([episode(i, LENGTH) for i in range(1)])
    for i in range(30):  # 300 transitions: far past the window, which a paused limiter does not enforce
        client.add(episode(i, LENGTH))
    state = limiter(client)
    assert state.inserts == 310 and state.can_insert and state.can_sample
    state = client.set_rate_limiter(paused=False).rate_limiter
    assert not state.paused and state.inserts == 310 and state.samples == 145  # 0.5 x (310 - 20)
    assert state.can_insert and state.can_sample
    client.add(episode(40, LENGTH))  # not held back: counts started again from what is stored
    assert limiter(client).inserts == 320


def test_runtime_changes_are_checked_and_a_refused_one_changes_nothing(limited):
    host, client = limited
    with pytest.raises(InvalidArgument, match=r"^change\.settings\.error_buffer: the window .* must hold one"):
        client.set_rate_limiter(error_buffer="2")
    assert limiter(client).max_diff == 40.0
    with pytest.raises(FailedPrecondition, match="paused: buffer 'free' has no rate limiter"):
        client.using("free").set_rate_limiter(paused=True)
    stats = client.set_rate_limiter(samples_per_insert=0.0, min_size_to_sample=0, error_buffer="")
    assert not stats.HasField("rate_limiter")  # turned off


def test_a_load_larger_than_the_window_makes_room_for_is_refused(limited):
    host, client = limited
    with pytest.raises(FailedPrecondition, match="episodes: 20 transitions at once, more than the longest episode"):
        client.load([episode(0, LENGTH), episode(1, LENGTH)])
    with pytest.raises(InvalidArgument, match="episode: 11 transitions, more than this buffer's max_episode_length"):
        client.add(episode(2, 11))
    assert client.stats().transitions == 0


def test_creating_a_buffer_with_a_limiter_that_can_deadlock_is_refused(limited):
    host, client = limited
    with pytest.raises(InvalidArgument, match="error_buffer: the window .* narrower than 2 x max"):
        client.using("third").create(samples_per_insert=4.0, min_size_to_sample=10, error_buffer="3")
    assert [b.name for b in client.list_buffers()] == ["buffer", "test_buffer", "free"]


def test_metrics_show_the_limiter(limited):
    host, client = limited
    client.add(episode(0, LENGTH))
    with BufferClient(host.address, "buffer", timeout=0.2) as impatient, pytest.raises(DeadlineExceeded):
        impatient.sample()
    text = urllib.request.urlopen(f"{host.http.url}/metrics", timeout=10).read().decode()
    assert 'rewind_buffer_rate_limiter_inserts_total{buffer="buffer"} 10.0' in text
    assert 'rewind_buffer_rate_limiter_can_sample{buffer="buffer"} 0.0' in text
    assert 'rewind_buffer_rate_limiter_blocked_calls_total{buffer="buffer",side="sample"} 1.0' in text
    assert 'rewind_buffer_rate_limiter_inserts_total{buffer="free"}' not in text  # no limiter there


def test_the_wire_carries_deadline_exceeded_for_a_held_call(limited):
    host, client = limited
    from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc

    client.add(episode(0, LENGTH))
    with make_channel(host.address) as channel, pytest.raises(grpc.RpcError) as caught:
        buffer_pb2_grpc.BufferServiceStub(channel).Sample(buffer_pb2.SampleRequest(buffer="buffer"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_block_checkpoint_keeps_the_limiter_counts(limited, tmp_path):
    from rewind import CheckpointClient
    from rewind_checkpoint.server import serve as serve_checkpoints
    from tests.support.configs import checkpoint_config

    host, client = limited
    for i in range(4):
        client.add(episode(i, LENGTH))
    client.sample()
    checkpoints = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store"))
    try:
        with CheckpointClient(checkpoints.address) as ckpt:
            saved = ckpt.save("agent", "run", 1, {}, buffers=[(host.address, "buffer")]).checkpoint
            assert saved.buffers[0].format == "blocks"
            for i in range(4, 7):
                client.add(episode(i, LENGTH))  # moved on since the checkpoint
            client.sample()
            ckpt.restore_buffers(saved)
        state = limiter(client)
        assert (state.inserts, state.samples, state.min_diff, state.max_diff) == (40, 4, -20.0, 40.0)
    finally:
        checkpoints.stop(grace_s=0.5)


def test_the_trainer_owns_its_buffers_with_inserts_that_never_wait(limited):
    # One process both collects and learns: an insert that waited for its own samples would wait for ever.
    from types import SimpleNamespace

    from rewind_trainer.connections import Services, own_buffers, parts_of

    host, client = limited
    test_buffer = client.using("test_buffer")
    services = Services(buffer=client, test_buffer=test_buffer, ckpt=None,
                        parts=parts_of([client], test_buffer, 5_000))
    own_buffers(services, SimpleNamespace(batch_size=4, horizon=1), "", generation=1)
    state = limiter(client)
    assert state.samples_per_insert == 0.5 and not state.inserts_wait  # the service's ratio, inserts free
    for i in range(30):  # 300 transitions with no sample: far past the window's 40
        client.add(episode(i, LENGTH))
    assert limiter(client).inserts_blocked_calls == 0
