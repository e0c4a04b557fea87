"""WeightsBoard and GetWeights' chunks: versions, waits that end, and files of any size in bounded pieces."""

from __future__ import annotations

import hashlib
import threading

import pytest

from rewind.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from rewind_trainer.weights import CHUNK_BYTES, Publisher, WeightsBoard, chunks


def test_a_wait_returns_the_newest_version_once_it_is_new_enough():
    board = WeightsBoard(generation=3, enabled=True)
    board.publish(100, 50, b"v100")
    assert board.wait(0, timeout_s=1).version == 100
    got = []
    waiter = threading.Thread(target=lambda: got.append(board.wait(150, timeout_s=30)))
    waiter.start()
    board.publish(120, 60, b"v120")  # not new enough: the wait goes on
    board.publish(200, 80, b"v200")
    waiter.join(timeout=30)
    assert [(p.version, p.step, p.data) for p in got] == [(200, 80, b"v200")]


def test_waits_end_with_a_reason():
    board = WeightsBoard(generation=1, enabled=True)
    with pytest.raises(DeadlineExceeded, match=r"no weights of version 5 or newer .* \(the newest: none yet\)"):
        board.wait(5, timeout_s=0)
    board.publish(3, 1, b"x")
    with pytest.raises(DeadlineExceeded, match="the newest: version 3"):
        board.wait(5, timeout_s=0)
    with pytest.raises(InvalidArgument, match="min_version: -1 is negative"):
        board.wait(-1, timeout_s=0)
    with pytest.raises(FailedPrecondition, match="publishes no weights; start it with --publish-weights-every"):
        WeightsBoard(generation=1, enabled=False).wait(0, timeout_s=0)
    ended: list[BaseException] = []

    def wait_for_ever() -> None:
        try:
            board.wait(99, None)
        except Unavailable as exc:
            ended.append(exc)

    waiter = threading.Thread(target=wait_for_ever)
    waiter.start()
    board.close()  # the run ends: the waiting call ends now, not at its deadline
    waiter.join(timeout=30)
    assert [str(e) for e in ended] == ["the trainer is stopping: no newer weights will be published"]


def test_a_file_of_any_size_goes_in_chunks_under_the_limit_and_comes_back_whole():
    board = WeightsBoard(generation=2, enabled=True)
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 17)  # 3 MiB and a bit: four chunks
    published = board.publish(7, 9, data)
    messages = list(chunks(published, board.generation))
    assert [m.offset for m in messages] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES]
    assert all(len(m.chunk) <= CHUNK_BYTES and m.version == 7 and m.generation == 2 for m in messages)
    assert (messages[0].step, messages[0].total_bytes, messages[0].sha256) == (9, len(data),
                                                                                hashlib.sha256(data).hexdigest())
    assert b"".join(m.chunk for m in messages) == data
    assert len(list(chunks(board.publish(8, 9, b""), 2))) == 1  # an empty file is still one message


def test_the_publisher_posts_at_the_start_then_every_n_updates():
    board = WeightsBoard(generation=1, enabled=True)
    posted = []

    def encode(updates: int):
        posted.append(updates)
        return updates, updates + 1, str(updates).encode()

    updates = [0]
    publisher = Publisher(board, 50, lambda: encode(updates[0]))
    for n in (0, 10, 49, 50, 80, 99, 100, 260):
        updates[0] = n
        publisher.on_boundary(n)
    assert posted == [0, 50, 100, 260] and board.latest.version == 260
