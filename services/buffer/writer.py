"""EpisodeWriter: a torchrl Writer that keeps episodes whole.

torchrl's RoundRobinWriter overwrites the oldest transitions one by one, which
leaves fragments of evicted episodes behind and lets an episode wrap around the
end of the storage. This writer instead places each episode in one contiguous
run of slots and evicts the oldest *whole* episodes (FIFO) to make room.

Slots that hold no live episode (fragments of evicted episodes, the unused
tail after a wrap) get a distinct negative id each in the `episode` column, so
that SliceSampler sees them as length-1 trajectories and, with
`strict_length=True`, never samples them.

Every write to the storage goes through `_before_overwrite` first: captures
taken without a copy (rewind_buffer.captures.RowCapture) watch the writer and
copy aside the rows they still need before they change. The writer runs
inside EpisodeBuffer's lock, so the copy and the write share one lock hold.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torchrl.data.replay_buffers.writers import Writer

from rewind_buffer import torchrl_adapter

TRAJ_KEY = "episode"


class EpisodeWriter(Writer):
    """Writes whole episodes contiguously; evicts the oldest whole episodes."""

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0
        # (episode id, first slot, length), oldest first.
        self._episodes: deque[tuple[int, int, int]] = deque()
        self._transitions = 0
        self.evicted = 0
        # RowCaptures of this storage still being held or streamed; each leaves when released (or collected).
        self.watchers: weakref.WeakSet = weakref.WeakSet()
        # The buffer's BlockMap (rewind_buffer.blocks), told of every write so the next capture seals those rows.
        self.block_map: Any = None

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def transitions(self) -> int:
        return self._transitions

    def add(self, data: Any) -> int:
        raise NotImplementedError("EpisodeWriter stores whole episodes: use extend() with one episode")

    def extend(self, data: Any) -> torch.Tensor:
        """Write consecutive whole episodes (a TensorDict (N,) with an `episode` column).

        Episodes that fit side by side from the cursor go in one storage write.
        """
        ids, lengths = torch.unique_consecutive(data[TRAJ_KEY], return_counts=True)

        def write(index: torch.Tensor, first: int, last: int, offset: int) -> None:
            torchrl_adapter.write_range(self._storage, index, data[offset : offset + len(index)])

        return self._place(ids.tolist(), lengths.tolist(), write)

    def extend_episodes(self, episodes: Sequence[Mapping[str, torch.Tensor]], ids: Sequence[int]) -> torch.Tensor:
        """extend() for episodes given one by one (a load's, as their messages arrived): each is copied
        straight into its slots, with no concatenation first (a fresh tensor the size of the whole load
        costs its page faults, then a second copy). The storage must be allocated already."""
        lengths = [int(next(iter(episode.values())).shape[0]) for episode in episodes]

        def write(index: torch.Tensor, first: int, last: int, offset: int) -> None:
            pieces = [{**episodes[i], TRAJ_KEY: torch.full((lengths[i],), ids[i], dtype=torch.int64)}
                      for i in range(first, last)]
            torchrl_adapter.write_pieces(self._storage, index, pieces)

        return self._place(list(ids), lengths, write)

    def _place(self, ids: list[int], lengths: list[int],
               write: Callable[[torch.Tensor, int, int, int], None]) -> torch.Tensor:
        """Place episodes from the cursor, evicting what is in their way, and write each run that fits side by
        side with `write(rows, first episode, end episode, offset of its first row in the data)`."""
        capacity = self._storage.max_size
        written, first, offset = [], 0, 0
        while first < len(ids):
            start = self._cursor if self._cursor + lengths[first] <= capacity else 0
            if start == 0 and self._cursor > 0:
                # Wrapping: the tail [cursor, capacity) is older than anything at 0.
                self._evict_overlapping(self._cursor, capacity)
                if self._storage.initialized:
                    self._invalidate(self._cursor, capacity)
            end, last = start, first
            while last < len(ids) and end + lengths[last] <= capacity:
                end += lengths[last]
                last += 1
            self._evict_overlapping(start, end)
            index = torch.arange(start, end)
            self._before_overwrite(start, end)
            write(index, first, last, offset)
            slot = start
            for eid, length in zip(ids[first:last], lengths[first:last], strict=True):
                self._episodes.append((eid, slot, length))
                self._transitions += length
                slot += length
            written.append(index)
            self._cursor, offset, first = end, offset + end - start, last
        return torch.cat(written)

    def _evict_overlapping(self, start: int, end: int) -> None:
        # Slots ahead of the cursor hold the oldest data in age order, so the
        # episodes in the way are always a prefix of the deque.
        while self._episodes:
            _, first, length = self._episodes[0]
            if first >= end or first + length <= start:
                break
            self._episodes.popleft()
            self._transitions -= length
            self._invalidate(first, first + length)
            self.evicted += 1

    def _before_overwrite(self, start: int, end: int, keys: tuple[str, ...] | None = None) -> None:
        """Let every watching capture copy aside rows [start, end) of `keys` (None: all columns) before they change,
        and the block map mark them written.

        The one invariant this keeps (see RowCapture): no storage write happens
        without this call first, for the same rows and columns, in the same lock
        hold. Every write of this class goes through it: `storage.set` in
        extend() and the episode column in _invalidate().
        """
        if self.block_map is not None:
            self.block_map.before_overwrite(start, end, keys)
        if self.watchers:
            for capture in list(self.watchers):
                capture.before_overwrite(start, end, keys)

    def _invalidate(self, start: int, end: int) -> None:
        self._before_overwrite(start, end, (TRAJ_KEY,))
        column = torchrl_adapter.columns(self._storage).get(TRAJ_KEY)
        column[start:end] = -1 - torch.arange(start, end, device=column.device)

    def _empty(self, empty_write_count: bool = True) -> None:
        self._cursor = 0
        self._episodes.clear()
        self._transitions = 0
        self.evicted = 0

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self._cursor, "episodes": [list(e) for e in self._episodes], "evicted": self.evicted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._cursor = int(state_dict["cursor"])
        self._episodes = deque(tuple(int(x) for x in e) for e in state_dict["episodes"])
        self._transitions = sum(length for _, _, length in self._episodes)
        self.evicted = int(state_dict["evicted"])

    def dumps(self, path):  # torchrl's on-disk checkpointing is replaced by rewind_buffer.snapshot
        raise NotImplementedError("use rewind_buffer.snapshot")

    def loads(self, path):
        raise NotImplementedError("use rewind_buffer.snapshot")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cursor={self._cursor}, episodes={len(self._episodes)})"
