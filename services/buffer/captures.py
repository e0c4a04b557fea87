"""Captured buffer states: a consistent copy taken now, streamed as a snapshot later.

A trainer captures its buffers at the step it checkpoints (a short pause for
the copy), carries on learning, and the checkpoint service streams the
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
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from rewind.errors import NotFound
from rewind_buffer.episode_buffer import BufferState

MAX_CAPTURES = 2       # per buffer
TTL_S = 600.0          # longer than a checkpoint takes to start streaming what it captured
REMEMBERED_DROPS = 256  # dropped ids kept to explain a later NOT_FOUND (bounded memory)


@dataclass
class Capture:
    buffer: str
    state: BufferState
    created: float = field(default_factory=time.monotonic)


class CaptureStore:
    """Per buffer, at most `limit` captures wait; each is dropped when streamed, displaced, or after `ttl_s`."""

    def __init__(self, limit: int = MAX_CAPTURES, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.ttl_s, self._clock = limit, ttl_s, clock
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
                del self._captures[key]
                self._remember(key, f"{self.limit} newer capture(s) of buffer {capture.buffer!r} were taken before "
                                    f"it was streamed (max_captures={self.limit} per buffer)")
            capture_id = uuid.uuid4().hex
            self._captures[capture_id] = capture
            return capture_id

    def take(self, capture_id: str, buffer: str) -> Capture:
        """Remove and return a capture of `buffer`.

        Raises:
            NotFound: unknown, expired, displaced, already streamed, or of another buffer.
        """
        with self._lock:
            self._expire(self._clock())
            capture = self._captures.get(capture_id)
            if capture is not None and capture.buffer == buffer:
                return self._captures.pop(capture_id)
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
            del self._captures[key]
            self._remember(key, f"it expired, not streamed within capture_ttl_s={self.ttl_s:g}s")

    def _remember(self, capture_id: str, why: str) -> None:
        self._dropped[capture_id] = why
        while len(self._dropped) > REMEMBERED_DROPS:
            self._dropped.popitem(last=False)
