"""Captured buffer states: a consistent state pinned now, streamed as a snapshot later.

A trainer captures its buffers at the step it checkpoints (a short pause that
copies no rows), carries on learning, and the checkpoint service streams the
capture at its own pace.

Captures are limited per buffer, and a new capture always succeeds: when a
buffer already has `limit` captures waiting, the oldest is dropped (its
capture_id then answers NOT_FOUND, saying why). This is safe for the
trainer, the one caller that depends on captures: a checkpoint hands its
capture to the checkpoint service right after taking it, which streams it
(and so takes it out of the store) at once; by the time the trainer captures
again, its previous capture is gone. A limit shared by all buffers, or a
refusal when full, would instead let any caller that captures and never
streams block every checkpoint until its captures expire.

A capture copies no rows when it is taken (`RowCapture`): it records the
capture point and registers with the buffer's writer, which calls it before
any write overwrites a row it still needs, so that it copies those rows
aside first (copy-before-overwrite). The rows nothing overwrote are read from
the live storage as the snapshot streams. What a capture copies aside counts
against `max_copy_bytes`; past it the capture is dropped (its Snapshot is
RESOURCE_EXHAUSTED, naming it) rather than hold unbounded memory.
"""

from __future__ import annotations

import bisect
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rewind.errors import Internal, NotFound, ResourceExhausted
from rewind_buffer import row_ranges

if TYPE_CHECKING:
    from rewind_buffer.buffer_state import BufferState

MAX_CAPTURES = 2       # per buffer
TTL_S = 600.0          # longer than a checkpoint takes to start streaming what it captured
REMEMBERED_DROPS = 256  # dropped ids kept to explain a later NOT_FOUND (bounded memory)
MAX_COPY_BYTES = 1024 * 2**20  # what one capture may copy aside before it is dropped (max_capture_copy_mb)
READ_CHUNK_BYTES = 4 * 2**20   # a snapshot reads the live storage this much at a time, under the buffer's lock


class RowCapture:
    """Rows [0, used) of a storage's columns as they were at the capture point, copied only when needed.

    Taking one (under the buffer's lock) records `used` and references to the
    live column tensors, and registers it in the writer's `watchers`; no row is
    copied then. The snapshot then streams the columns in order, chunk by chunk
    (`columns()`), each chunk read under the lock.

    The invariant, kept under `lock` (the buffer's lock, held by every write to
    the storage and by every read here): for each column not yet streamed past
    a row r < used, the capture-point value of row r is either still in the
    live column (nothing wrote it since) or in `_saved`. EpisodeWriter calls
    `before_overwrite(start, end, keys)` before it writes rows [start, end) of
    the columns `keys` (the whole row for an episode, the `episode` column alone
    for an eviction's invalidation), and that copies the rows still needed and
    not yet saved, in the same lock hold as the write. Rows already streamed are
    needed no more, so their saved copies are freed and later writes to them
    copy nothing. Releasing a capture (streamed, expired, displaced, dropped
    over the cap, or garbage) unregisters it, and writes stop paying for it.
    """

    def __init__(self, lock: Any, columns: dict[str, torch.Tensor], used: int,
                 watchers: weakref.WeakSet, max_copy_bytes: int | None = None) -> None:
        """Called with `lock` held: nothing can write between the capture point and the registration."""
        self.lock = lock
        self.used = used
        self.max_copy_bytes = max_copy_bytes  # None: no cap (at most one copy of the rows, the old full copy)
        self.label = "the snapshot"           # "capture '<id>'" once a CaptureStore holds it
        self.copied_bytes = 0                 # copied aside since the capture point (the cap counts these)
        self.copied_rows = 0                  # row-column pieces copied aside, counted in rows
        self.failed: str | None = None
        self.released = False
        # Set by a CaptureStore while the capture waits in it: past this time (its TTL) it is expired there,
        # so the first write after it releases it instead of copying for it.
        self.expires_at: float | None = None
        self.clock: Callable[[], float] = time.monotonic
        self._keys = tuple(columns)
        self._live = columns
        self._row_bytes = {key: _row_bytes(t) for key, t in columns.items()}
        self._saved: dict[str, list[tuple[int, int, torch.Tensor]]] = {key: [] for key in columns}
        # Per column, the rows a stream will still read: writes copy aside only these.
        self._needed: dict[str, row_ranges.Ranges] = {key: [(0, used)] if used else [] for key in columns}
        self._watchers = watchers
        watchers.add(self)

    # -- the writer's side ------------------------------------------------------

    def before_overwrite(self, start: int, end: int, keys: tuple[str, ...] | None = None) -> None:
        """Copy aside the capture-point rows [start, end) of `keys` (None: every column) that are still needed.

        The writer calls it, holding the buffer's lock, before it writes those rows.
        """
        end = min(end, self.used)
        if self.failed or self.released or start >= end:
            return
        if self.expires_at is not None and self.clock() > self.expires_at:
            self.release()  # the store answers NOT_FOUND (expired) for it; nothing will stream it
            return
        todo: list[tuple[str, int, int]] = []
        for key in self._keys:
            if keys is not None and key not in keys:
                continue
            for lo, hi in row_ranges.clip(self._needed[key], start, end):
                todo += [(key, a, b) for a, b in _gaps(self._saved[key], lo, hi)]
        nbytes = sum((b - a) * self._row_bytes[key] for key, a, b in todo)
        if self.max_copy_bytes is not None and self.copied_bytes + nbytes > self.max_copy_bytes:
            self._fail(f"writes since it was taken overwrote more than max_capture_copy_mb="
                       f"{self.max_copy_bytes / 2**20:g} MiB of the rows it holds before they were streamed; "
                       "stream captures sooner, or raise max_capture_copy_mb")
            return
        for key, a, b in todo:
            bisect.insort(self._saved[key], (a, b, self._live[key][a:b].to("cpu", copy=True)), key=_start)
            self.copied_rows += b - a
        self.copied_bytes += nbytes

    # -- the stream's side ------------------------------------------------------

    def columns(self) -> dict[str, CapturedColumn]:
        """The columns, to stream in this order (what snapshot.encode takes)."""
        return {key: CapturedColumn(self, index, key) for index, key in enumerate(self._keys)}

    def read(self, index: int, key: str, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of column `key` at the capture point (a CPU tensor); the stream's next chunk.

        A whole-snapshot stream reads each column front to back: rows before
        `end` are needed no more once read.

        Raises:
            ResourceExhausted: the capture went over its cap and was dropped.
        """
        with self.lock:
            rows = self._read_locked(key, start, end)
            self._needed[key] = row_ranges.subtract(self._needed[key], 0, end)
            self._prune(key)
        return rows

    def read_range(self, key: str, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of column `key` at the capture point, in any order (a block stream's reads).

        Raises:
            ResourceExhausted: the capture went over its cap and was dropped.
        """
        with self.lock:
            return self._read_locked(key, start, end)

    def keep_only(self, ranges: row_ranges.Ranges) -> None:
        """From now on only `ranges` of every column will be read: writes elsewhere copy nothing."""
        with self.lock:
            for key in self._keys:
                self._needed[key] = row_ranges.intersect(self._needed[key], ranges)
                self._prune(key)

    def forget(self, start: int, end: int) -> None:
        """Rows [start, end) of every column will not be read again."""
        with self.lock:
            for key in self._keys:
                self._needed[key] = row_ranges.subtract(self._needed[key], start, end)
                self._prune(key)

    def _read_locked(self, key: str, start: int, end: int) -> torch.Tensor:
        if self.failed:
            raise ResourceExhausted(f"capture_id: {self.label} was dropped: {self.failed}")
        if self.released or not row_ranges.covers(self._needed[key], start, end):
            raise Internal(f"{self.label}: read of {key}[{start}:{end}], rows it no longer holds")
        live, pieces, parts, pos = self._live[key], self._saved[key], [], start
        for a, b, saved in pieces[max(0, bisect.bisect_right(pieces, start, key=_start) - 1):]:
            if a >= end:
                break
            if b <= pos:
                continue
            if a > pos:
                parts.append(live[pos:a].to("cpu", copy=True))
            parts.append(saved[max(a, pos) - a: min(b, end) - a])
            pos = min(b, end)
        if pos < end:
            parts.append(live[pos:end].to("cpu", copy=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _prune(self, key: str) -> None:
        """Free the saved copies of rows no stream will read."""
        needed = self._needed[key]
        self._saved[key] = [p for p in self._saved[key] if row_ranges.clip(needed, p[0], p[1])]

    def release(self) -> None:
        """Stop watching writes and free the saved rows (idempotent)."""
        with self.lock:
            self.released = True
            self._watchers.discard(self)
            self._saved = {key: [] for key in self._keys}

    def start_streaming(self) -> bool:
        """Whether the capture can stream (not dropped over its cap, not expired); it no longer expires then."""
        with self.lock:
            if self.failed or self.released:
                return False
            self.expires_at = None  # streaming now: the stream's deadline bounds it
            return True

    def check(self) -> None:
        """Raise ResourceExhausted, naming the capture, if it was dropped over its cap."""
        with self.lock:
            if self.failed:
                raise ResourceExhausted(f"capture_id: {self.label} was dropped: {self.failed}")

    def set_cap(self, max_copy_bytes: int) -> None:
        """Apply a cap (a CaptureStore's) to a capture already taken."""
        with self.lock:
            self.max_copy_bytes = max_copy_bytes
            if self.copied_bytes > max_copy_bytes and not self.failed:
                self._fail(f"it copied more than max_capture_copy_mb={max_copy_bytes / 2**20:g} MiB before it was "
                           "stored")

    def _fail(self, why: str) -> None:
        self.failed = why
        self._watchers.discard(self)
        self._saved = {key: [] for key in self._keys}


@dataclass(frozen=True, eq=False)
class CapturedColumn:
    """One column of a RowCapture, as snapshot.encode streams it: dtype, shape, then chunks()."""

    capture: RowCapture
    index: int
    key: str

    @property
    def dtype(self) -> torch.dtype:
        return self.capture._live[self.key].dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.capture.used, *self.capture._live[self.key].shape[1:])

    def chunks(self) -> Iterator[torch.Tensor]:
        """The column's rows, READ_CHUNK_BYTES at a time, each read under the buffer's lock."""
        step = max(1, READ_CHUNK_BYTES // max(1, self.capture._row_bytes[self.key]))
        for start in range(0, self.capture.used, step):
            yield self.capture.read(self.index, self.key, start, min(start + step, self.capture.used))

    def close(self) -> None:
        self.capture.release()


def _row_bytes(column: torch.Tensor) -> int:
    return column[0:0].shape[1:].numel() * column.element_size()


def _start(piece: tuple[int, int, torch.Tensor]) -> int:
    return piece[0]


def _gaps(pieces: list[tuple[int, int, torch.Tensor]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) that no piece (sorted, disjoint [a, b) ranges) covers."""
    first = max(0, bisect.bisect_right(pieces, lo, key=_start) - 1)
    end = bisect.bisect_left(pieces, hi, key=_start)
    return row_ranges.complement([(a, b) for a, b, _ in pieces[first:end]], lo, hi)


@dataclass
class Capture:
    buffer: str
    state: BufferState
    created: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> RowCapture | None:
        return getattr(self.state, "rows", None)

    def release(self) -> None:
        if self.rows is not None:
            self.rows.release()


class CaptureStore:
    """Per buffer, at most `limit` captures wait; each is dropped when streamed, displaced, or after `ttl_s`."""

    def __init__(self, limit: int = MAX_CAPTURES, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic, max_copy_bytes: int = MAX_COPY_BYTES) -> None:
        self.limit, self.ttl_s, self._clock, self.max_copy_bytes = limit, ttl_s, clock, max_copy_bytes
        self._captures: dict[str, Capture] = {}  # insertion order: oldest first
        self._dropped: OrderedDict[str, str] = OrderedDict()  # capture id -> why it was dropped
        self._lock = threading.Lock()

    def put(self, capture: Capture) -> str:
        """Store a capture and return its id; the buffer's oldest capture makes room if it has `limit` already."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            capture.created = now
            waiting = [key for key, c in self._captures.items() if c.buffer == capture.buffer]
            for key in waiting[: max(0, len(waiting) - self.limit + 1)]:
                self._captures.pop(key).release()
                self._remember(key, f"{self.limit} newer capture(s) of buffer {capture.buffer!r} were taken before "
                                    f"it was streamed (max_captures={self.limit} per buffer)")
            capture_id = uuid.uuid4().hex
            if capture.rows is not None:
                capture.rows.label = f"capture {capture_id!r}"
                capture.rows.set_cap(self.max_copy_bytes)
                capture.rows.clock, capture.rows.expires_at = self._clock, now + self.ttl_s
            self._captures[capture_id] = capture
            return capture_id

    def take(self, capture_id: str, buffer: str) -> Capture:
        """Remove and return a capture of `buffer` (the caller streams it, which releases it).

        Raises:
            NotFound: unknown, expired, displaced, already streamed, or of another buffer.
            ResourceExhausted: the capture went over max_copy_bytes and was dropped.
        """
        with self._lock:
            self._expire(self._clock())
            capture = self._captures.get(capture_id)
            if capture is not None and capture.buffer == buffer:
                del self._captures[capture_id]
                if capture.rows is not None and not capture.rows.start_streaming():
                    why = capture.rows.failed or f"it expired, not streamed within capture_ttl_s={self.ttl_s:g}s"
                    capture.release()
                    self._remember(capture_id, why)
                    if capture.rows.failed:
                        capture.rows.check()
                    raise NotFound(f"capture_id: capture {capture_id!r} was dropped: {why}")
                return capture
            why = self._dropped.get(capture_id)
            if why is not None:
                raise NotFound(f"capture_id: capture {capture_id!r} was dropped: {why}")
            raise NotFound(f"capture_id: no capture {capture_id!r} of buffer {buffer!r} (each capture streams "
                           f"once and expires after {self.ttl_s:.0f}s)")

    def __len__(self) -> int:
        with self._lock:
            return len(self._captures)

    def _expire(self, now: float) -> None:
        for key in [k for k, c in self._captures.items() if now - c.created > self.ttl_s]:
            self._captures.pop(key).release()
            self._remember(key, f"it expired, not streamed within capture_ttl_s={self.ttl_s:g}s")

    def _remember(self, capture_id: str, why: str) -> None:
        self._dropped[capture_id] = why
        while len(self._dropped) > REMEMBERED_DROPS:
            self._dropped.popitem(last=False)
