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
