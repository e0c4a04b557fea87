"""LimiterGate: where a buffer's calls wait for its rate limiter.

One condition on the buffer's own lock: a call the limiter holds back waits on it with the lock
released, and every insert, sample, limiter change, replacement or stop wakes the waiters to look
again. The gate knows nothing of storage: the buffer tells it how many transitions it holds.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from rewind.errors import Cancelled, DeadlineExceeded, ResourceExhausted, RewindError
from rewind_buffer.rate_limiter import INSERT, SAMPLE, RateLimiter, Wait

# A waiting call looks this often whether it was given up (cancelled, its stream closed).
WAIT_SLICE_S = 0.2


class LimiterGate:
    """A buffer's rate limiter (None: none) and the calls waiting for it.

    Args:
        lock: the buffer's lock (reentrant); wait() and counted() are called with it held.
        name: the buffer's name, for messages.
        size: the transitions the buffer holds now.
    """

    def __init__(self, lock: threading.RLock, name: str, size: Callable[[], int],
                 limiter: RateLimiter | None = None) -> None:
        self.name, self._size = name, size
        self.limiter = limiter
        self._changed = threading.Condition(lock)
        self._lock = lock
        self._closed: RewindError | None = None  # set once the buffer is replaced or the service stops
        self._ids = itertools.count()

    def replace(self, limiter: RateLimiter | None) -> None:
        """Enforce `limiter` from now on; waiting calls ask it."""
        with self._lock:
            self.limiter = limiter
            self._changed.notify_all()

    def counted(self, side: str, count: int) -> None:
        """`count` transitions went in (INSERT) or sequences came out (SAMPLE): count them, wake the waiters."""
        if self.limiter is not None:
            (self.limiter.inserted if side == INSERT else self.limiter.sampled)(count)
            self._changed.notify_all()

    def close(self, error: RewindError) -> None:
        """Wake every waiting call with `error`: the buffer was replaced, or the service stops."""
        with self._lock:
            self._closed = error
            self._changed.notify_all()

    def wait(self, side: str, count: int, wait: Wait) -> bool:
        """Hold the caller, the lock released, until the limiter lets `count` through; True if it waited.

        Raises:
            DeadlineExceeded: still held back after wait.seconds (reason RATE_LIMITED, the limiter's state
                in the error's metadata).
            ResourceExhausted: the service's waiting calls are all taken (limiter_max_waiting).
            Cancelled: the caller went away.
            The buffer's closing error: it was replaced, or the service is stopping.
        """
        limiter = self.limiter
        if limiter is None or limiter.allows(side, self._size(), count):
            return False
        if wait.slots is not None and not wait.slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"limiter_max_waiting: every slot for calls waiting on a rate limiter is taken; this {side} of "
                f"{count:,} was refused at once (retry later, or raise limiter_max_waiting)")
        stats, token = limiter.side_stats(side), next(self._ids)
        stats.begin_wait(token)
        deadline = time.monotonic() + wait.seconds
        try:
            while True:
                if self._closed is not None:
                    raise self._closed
                if self.limiter is not limiter:  # changed meanwhile (SetRateLimiter): ask the new one
                    limiter = self.limiter
                    if limiter is None:
                        return True
                if limiter.allows(side, self._size(), count):
                    return True
                if not wait.active():
                    raise Cancelled(f"{side}: the call was given up while the rate limiter held it back")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._rate_limited(limiter, side, count, wait.seconds)
                self._changed.wait(min(left, WAIT_SLICE_S))
        finally:
            stats.end_wait(token)
            if wait.slots is not None:
                wait.slots.release()

    def _rate_limited(self, limiter: RateLimiter, side: str, count: int, waited: float) -> DeadlineExceeded:
        s, size = limiter.settings, self._size()
        why = (f"the buffer holds {size:,} of min_size_to_sample {s.min_size_to_sample:,} transitions"
               if side == SAMPLE and size < s.min_size_to_sample else
               f"inserts x samples_per_insert - samples = {limiter.error():g} would leave the window "
               f"[{s.min_diff:g}, {s.max_diff:g}]")
        ahead = "samples have to catch up" if side == INSERT else "inserts have to catch up"
        return DeadlineExceeded(
            f"buffer {self.name!r}: the rate limiter held this {side} of {count:,} back for {waited:.1f} s: {why}; "
            f"{ahead} (GetStats shows the limiter; SetRateLimiter changes or pauses it)",
            reason="RATE_LIMITED", metadata={"buffer": self.name, "side": side, "count": str(count),
                                             **limiter.describe(size)})
