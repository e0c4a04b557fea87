"""The one place that reaches into torchrl: its private hook must keep the signature it was written for."""

from __future__ import annotations

import pytest
from torchrl.data import SliceSampler

from rewind_buffer import torchrl_adapter


def test_the_installed_torchrl_has_the_hook_signature_the_adapter_overrides():
    torchrl_adapter.check_hooks()  # raises, saying what to do, if torchrl changed it
    assert "_finalize_index" in vars(torchrl_adapter.EpisodeSliceSampler)


def test_a_changed_hook_signature_fails_with_a_message_that_says_what_to_do(monkeypatch):
    def changed(self, *, index, num_slices, seq_length, storage, new_argument):  # a future torchrl
        raise AssertionError("never called")

    monkeypatch.setattr(SliceSampler, "_finalize_index", changed)
    with pytest.raises(RuntimeError) as info:
        torchrl_adapter.check_hooks()
    message = str(info.value)
    assert "SliceSampler._finalize_index takes ('index', 'num_slices', 'seq_length', 'storage', 'new_argument')" \
        in message
    assert "rewind_buffer/torchrl_adapter.py must be updated" in message and "pin torchrl" in message


def test_write_range_leaves_the_storage_as_set_would():
    # The writer's slice copies must keep set()'s cursor and length bookkeeping, which the sampler reads
    # (with a wrong length or cursor, sequences crossed episodes after the storage wrapped around).
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage

    def rows(first: int, count: int) -> TensorDict:
        values = torch.arange(first, first + count, dtype=torch.float32)
        return TensorDict({"obs": values.unsqueeze(-1).repeat(1, 3), "episode": values.long()}, batch_size=[count])

    by_set, by_range, by_pieces = LazyTensorStorage(10), LazyTensorStorage(10), LazyTensorStorage(10)
    written = 0  # rows 0..written-1 were written; the rest hold whatever the allocation left
    for start, count in [(0, 4), (4, 5), (0, 3), (3, 2)]:  # the last two wrap around, as the writer does
        index = torch.arange(start, start + count)
        data = rows(100 * start + count, count)
        by_set.set(index, data)
        torchrl_adapter.write_range(by_range, index, data)
        if not by_pieces.initialized:
            torchrl_adapter.allocate(by_pieces, data[0])
        # The same rows as pieces (a load's episodes, one by one): the first row, then the rest.
        torchrl_adapter.write_pieces(by_pieces, index, [dict(data[:1].items()), dict(data[1:].items())])
        for storage in (by_range, by_pieces):
            assert len(storage) == len(by_set)
            assert storage._last_cursor_index == by_set._last_cursor_index
            assert storage._is_full == by_set._is_full
        written = max(written, start + count)
        for key in ("obs", "episode"):
            assert torch.equal(by_range._storage[key][:written], by_set._storage[key][:written])
            assert torch.equal(by_pieces._storage[key][:written], by_set._storage[key][:written])
    assert by_range._mutation_revision == by_set._mutation_revision


def test_a_missing_storage_hook_fails_with_a_message_that_says_what_to_do(monkeypatch):
    from torchrl.data import LazyTensorStorage

    monkeypatch.setattr(LazyTensorStorage, "_get_new_len", None)  # as if a torchrl release dropped it
    with pytest.raises(RuntimeError, match=r"LazyTensorStorage\._get_new_len is gone; write_range\(\)"):
        torchrl_adapter.check_hooks()
