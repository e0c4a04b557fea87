"""Every use of torchrl internals in the buffer service, in one place.

The buffer is built from torchrl's public parts (ReplayBuffer,
LazyTensorStorage, SliceSampler, a Writer subclass), but three things reach
below their public contract, for speed and for exact snapshots:

- `EpisodeSliceSampler` overrides SliceSampler's private `_finalize_index`;
- sampling calls `sampler.sample(storage, n)` directly and gathers batches
  time-major from the storage's columns, skipping ReplayBuffer.sample;
- snapshots and the writer read and write the storage's column TensorDict
  (`storage._storage`), a block restore sets its used length (`_len`), and the
  writer's slice writes keep set()'s cursor and length bookkeeping
  (`_set_last_cursor`, `_get_new_len`, `_bump_mutation_revision`).

torchrl is pinned to the minor release these are tested with (pyproject.toml),
and `check_hooks()` (run by the test suite) fails with a clear message when
the private hook's signature changes. If it changes anyway, the override is
not installed and torchrl's own (slower, equivalent) path runs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler
from torchrl.data.replay_buffers.storages import Storage
from torchrl.data.replay_buffers.writers import Writer

log = logging.getLogger(__name__)

# The keyword arguments torchrl 0.14's SliceSampler._finalize_index takes.
FINALIZE_INDEX_PARAMS = ("index", "num_slices", "seq_length", "target_seq_length", "mask_flat", "storage")
# The bookkeeping LazyTensorStorage.set does, which write_range repeats around its slice copies.
STORAGE_HOOKS = ("_set_last_cursor", "_get_new_len", "_bump_mutation_revision")


def check_hooks() -> None:
    """Raise RuntimeError, saying what to do, if torchrl's private hook no longer has the expected signature."""
    if not isinstance(getattr(LazyTensorStorage, "_len", None), property):
        raise RuntimeError("torchrl: LazyTensorStorage._len is no longer a property; set_length() in "
                           "rewind_buffer/torchrl_adapter.py must be updated for this torchrl")
    for hook in STORAGE_HOOKS:
        if not callable(getattr(LazyTensorStorage, hook, None)):
            raise RuntimeError(f"torchrl: LazyTensorStorage.{hook} is gone; write_range() in "
                               "rewind_buffer/torchrl_adapter.py must be updated for this torchrl")
    found = tuple(p for p in inspect.signature(SliceSampler._finalize_index).parameters if p != "self")
    if found != FINALIZE_INDEX_PARAMS:
        import torchrl

        raise RuntimeError(
            f"torchrl {torchrl.__version__}: SliceSampler._finalize_index takes {found}, not "
            f"{FINALIZE_INDEX_PARAMS}; rewind_buffer/torchrl_adapter.py must be updated for this torchrl, "
            "or pin torchrl to the range in pyproject.toml")


def _hook_fits() -> bool:
    try:
        check_hooks()
    except RuntimeError as exc:
        log.warning("%s; sampling falls back to torchrl's own path", exc)
        return False
    return True


class EpisodeSliceSampler(SliceSampler):
    """SliceSampler minus a per-sample gather of every column.

    torchrl's `_finalize_index` reads `storage[index]` on each sample only to
    emit an init marker this buffer never uses; skipping it halves the cost of
    a sample. With a truncated_key or padding, torchrl's own path runs.
    """

    if _hook_fits():

        def _finalize_index(self, *, index, num_slices, seq_length, target_seq_length, mask_flat, storage):
            if self.truncated_key is None and mask_flat is None:
                return index.to(torch.long).unbind(-1), {}
            return super()._finalize_index(
                index=index, num_slices=num_slices, seq_length=seq_length,
                target_seq_length=target_seq_length, mask_flat=mask_flat, storage=storage,
            )


def replay_buffer(capacity: int, device: torch.device, *, num_slices: int, slice_len: int, traj_key: str,
                  writer: Writer, generator: torch.Generator) -> ReplayBuffer:
    """A ReplayBuffer that samples `num_slices` whole-episode slices of `slice_len` steps (strict length).

    The sampler is given the slice length, not the number of slices, so that one call may ask for any
    number of slices (sample_index's `sequences`: a shard's share of a sharded batch); for `num_slices`
    it draws exactly what a sampler given num_slices would.
    """
    return ReplayBuffer(
        storage=LazyTensorStorage(capacity, device=device),
        sampler=EpisodeSliceSampler(slice_len=slice_len, traj_key=traj_key, end_key=None, truncated_key=None,
                                    strict_length=True, cache_values=True),
        writer=writer,
        batch_size=num_slices * slice_len,
        generator=generator,
    )


def allocate(storage: Storage, row: TensorDictBase) -> None:
    """Allocate a LazyTensorStorage's columns now, shaped after one `row` (torchrl would on the first write)."""
    storage._init(row)


def sample_index(rb: ReplayBuffer, sequences: int | None = None) -> torch.Tensor:
    """The storage indices of one batch (of `sequences` slices; default the buffer's), slice after slice,
    drawn by the sampler alone."""
    size = rb.batch_size if sequences is None else sequences * rb.sampler.slice_len
    (index,), _ = rb.sampler.sample(rb.storage, size)
    return index


def columns(storage: Storage) -> TensorDictBase:
    """The storage's column TensorDict (one tensor per key, capacity rows)."""
    return storage._storage


def storage_bytes(storage: Storage) -> int:
    """Bytes the storage's columns occupy (0 before they are allocated)."""
    if not storage.initialized:
        return 0
    return sum(t.numel() * t.element_size() for t in columns(storage).values(include_nested=True, leaves_only=True))


def copy_rows(storage: Storage, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A CPU copy of the used rows of each column (safe to read after the buffer moves on)."""
    used = len(storage)
    return {key: columns(storage).get(key)[:used].to("cpu", copy=True) for key in keys}


def live_columns(storage: Storage, keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], int]:
    """The storage's column tensors themselves (capacity rows each, no copy) and how many rows are used.

    The tensors are the storage: writes change them in place (a RowCapture reads them under the buffer's lock).
    """
    return {key: columns(storage).get(key) for key in keys}, len(storage)


def set_length(storage: Storage, rows: int) -> None:
    """Make the storage's used length `rows`, after a restore wrote them straight into its columns."""
    storage._len = rows


def write_range(storage: Storage, index: torch.Tensor, data: TensorDictBase) -> None:
    """Write `data` into the consecutive rows `index` (an arange): what `storage.set(index, data)` does, the
    cursor and length bookkeeping included (the sampler reads both), but with a slice copy per column where
    set() scatters row by row through an index tensor (twice the time of an episode's insert)."""
    if not storage.initialized:
        storage.set(index, data)  # allocates the columns first
        return
    storage._set_last_cursor(index)
    storage._get_new_len(data, index)
    start, end = int(index[0]), int(index[-1]) + 1
    target = columns(storage)
    for key, value in data.items():
        target.get(key)[start:end].copy_(value)
    storage._bump_mutation_revision()  # as set() does: caches derived from the contents are stale


def write_pieces(storage: Storage, index: torch.Tensor, pieces: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """write_range for data given as consecutive pieces (whole episodes): each copied into its own rows, the
    same bookkeeping. The storage must be allocated already (the first write shapes its columns)."""
    storage._set_last_cursor(index)
    storage._get_new_len(index, index)  # it reads only how many rows the write has
    target, row = columns(storage), int(index[0])
    for piece in pieces:
        rows = 0
        for key, value in piece.items():
            rows = value.shape[0]
            target.get(key)[row : row + rows].copy_(value)
        row += rows
    storage._bump_mutation_revision()


def extend_in_place(rb: ReplayBuffer, write: Callable[[], torch.Tensor]) -> torch.Tensor:
    """What ReplayBuffer.extend does around its writer's call (its locks, then the sampler told of the rows
    written), for a write through one of the writer's own methods (EpisodeWriter.extend_episodes)."""
    with rb._replay_lock, rb._write_lock:
        index = write()
        rb._sampler.extend(index)
    return index


def write_rows(storage: Storage, tensors: dict[str, torch.Tensor]) -> None:
    """Fill rows 0..n-1 from tensors of n rows each (a restore)."""
    used = next(iter(tensors.values())).shape[0]
    if used:
        storage.set(torch.arange(used), TensorDict(tensors, batch_size=[used]))
