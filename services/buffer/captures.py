"""Captured buffer states: a consistent copy taken now, streamed as a snapshot later.

A trainer captures its buffers at the step it checkpoints (a short pause for
the copy), carries on learning, and the checkpoint service streams the
capture at its own pace.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from rewind.errors import NotFound, ResourceExhausted
from rewind_buffer.episode_buffer import BufferState

MAX_CAPTURES = 8
TTL_S = 3600.0


@dataclass
class Capture:
    buffer: str
    state: BufferState
    created: float = field(default_factory=time.monotonic)


class CaptureStore:
    """At most `limit` captures at once; each is dropped when streamed, or after `ttl_s`."""

    def __init__(self, limit: int = MAX_CAPTURES, ttl_s: float = TTL_S) -> None:
        self.limit, self.ttl_s = limit, ttl_s
        self._captures: dict[str, Capture] = {}
        self._lock = threading.Lock()

    def put(self, capture: Capture) -> str:
        with self._lock:
            self._expire()
            if len(self._captures) >= self.limit:
                raise ResourceExhausted(f"capture: {self.limit} captures are waiting to be streamed; stream or "
                                        f"let them expire ({self.ttl_s:.0f}s) first")
            capture_id = uuid.uuid4().hex
            self._captures[capture_id] = capture
            return capture_id

    def take(self, capture_id: str, buffer: str) -> Capture:
        """Remove and return a capture of `buffer`.

        Raises:
            NotFound: unknown, expired, already streamed, or of another buffer.
        """
        with self._lock:
            self._expire()
            capture = self._captures.get(capture_id)
            if capture is None or capture.buffer != buffer:
                raise NotFound(f"capture_id: no capture {capture_id!r} of buffer {buffer!r} (each capture streams "
                               f"once and expires after {self.ttl_s:.0f}s)")
            return self._captures.pop(capture_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._captures)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, c in self._captures.items() if now - c.created > self.ttl_s]:
            del self._captures[key]
