"""GetWeights from a real `rewind train` process: versions that grow with the updates, whole files that load,
and waits that end with the run."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from rewind.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from tests.support.trainer import TrainerProcess


def test_collectors_get_the_policy_by_version_until_the_run_ends(services, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "100000",
                             "--publish-weights-every", "50")
    try:
        trainer.client.wait_until_serving(timeout=120)
        first = trainer.client.weights(min_version=0, timeout=120)  # whatever is published now
        assert first.generation == 1  # a fresh run
        later = trainer.client.weights(min_version=first.version + 100, timeout=300)
        # (the update burst when the seed steps end makes hundreds of updates at one step: versions grow within it)
        assert later.version >= first.version + 100 and later.step >= first.step
        assert trainer.client.status().step >= later.step
        assert hashlib.sha256(later.data).hexdigest() != hashlib.sha256(first.data).hexdigest()
        a, b = first.tensors(), later.tensors()
        assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # it learned in between
        with pytest.raises(DeadlineExceeded, match="no weights of version 10000000 or newer"):
            trainer.client.weights(min_version=10_000_000, timeout=1)
        # A call waiting for a version that never comes ends with the run, not at its deadline.
        ended: list[BaseException] = []

        def wait() -> None:
            try:
                trainer.client.weights(min_version=10_000_000, timeout=300)
            except (Unavailable, DeadlineExceeded) as exc:
                ended.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        trainer.client.stop()
        waiter.join(timeout=120)
        assert [type(e) for e in ended] == [Unavailable], ended
        assert trainer.wait() == 0, trainer.output()
    finally:
        trainer.stop()


def test_a_trainer_that_publishes_nothing_says_how_to_turn_it_on(services, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "100000")
    try:
        trainer.client.wait_until_serving(timeout=120)
        with pytest.raises(FailedPrecondition, match="publishes no weights; start it with --publish-weights-every"):
            trainer.client.weights()
    finally:
        trainer.stop()
