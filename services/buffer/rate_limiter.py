"""A buffer's rate limiter: Reverb's `SampleToInsertRatio` (and `MinSize`) over transitions and sequences.

Units: an insert is one stored transition, a sample is one sequence of a batch. An episode of L steps is
an insert of L at once, a batch of B sequences a sample of B at once. With `inserts` and `samples` counted
since the limiter began, and `size` the transitions the buffer holds:

    can_sample(B):  size >= min_size_to_sample  and  inserts * samples_per_insert - samples - B >= min_diff
    can_insert(L):  size + L <= min_size_to_sample  or  (inserts + L) * samples_per_insert - samples <= max_diff

A scalar `error_buffer` e gives min_diff, max_diff = samples_per_insert * min_size_to_sample -/+ e (the
window then tracks only what happened after the buffer first reached min_size_to_sample); a pair gives
them as they are. `MinSize` is samples_per_insert 1 with an unbounded window.

Settings that could hold both sides back for ever are refused when the buffer is created (see
`LimiterSettings.check`). Waiting is the buffer's business (rewind_buffer.episode_buffer): this module only
counts, decides and keeps the waiting statistics that Reverb dropped in 2021.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rewind.errors import InvalidArgument

UNBOUNDED = math.inf
INSERT, SAMPLE = "insert", "sample"


@dataclass(frozen=True)
class LimiterSettings:
    """What a limiter enforces: Reverb's four numbers, plus whether inserts may wait at all.

    `inserts_wait=False` keeps samples waiting for inserts but never holds an insert back, as Acme does
    when one process both collects and learns (an insert that waited for that process's own samples
    would wait for ever).
    """

    samples_per_insert: float
    min_size_to_sample: int
    min_diff: float
    max_diff: float
    inserts_wait: bool = True

    @classmethod
    def sample_to_insert_ratio(cls, samples_per_insert: float, min_size_to_sample: int,
                               error_buffer: float | tuple[float, float], inserts_wait: bool = True
                               ) -> LimiterSettings:
        """Reverb's SampleToInsertRatio: a scalar error_buffer is a window around the ratio after min size."""
        if isinstance(error_buffer, (int, float)):
            offset = samples_per_insert * min_size_to_sample
            low, high = offset - error_buffer, offset + error_buffer
        else:
            low, high = error_buffer
        return cls(float(samples_per_insert), int(min_size_to_sample), float(low), float(high), inserts_wait)

    @classmethod
    def min_size(cls, min_size_to_sample: int) -> LimiterSettings:
        """Reverb's MinSize: samples wait until the buffer holds min_size_to_sample transitions, nothing else."""
        return cls(1.0, int(min_size_to_sample), -UNBOUNDED, UNBOUNDED, True)

    @property
    def is_min_size(self) -> bool:
        return self.min_diff == -UNBOUNDED and self.max_diff == UNBOUNDED

    def check(self, *, batch_size: int, longest_episode: int, buffer_size: int) -> None:
        """Refuse settings that can deadlock, naming the fields (Reverb's checks, for whole episodes and batches).

        Args:
            batch_size: sequences one sample call takes.
            longest_episode: the most transitions one insert may bring (max_episode_length, or buffer_size).
            buffer_size: the most transitions the buffer can hold.

        Raises:
            InvalidArgument: the first rule the settings break.
        """
        spi, low, high = self.samples_per_insert, self.min_diff, self.max_diff
        if not spi > 0 or not math.isfinite(spi):
            raise InvalidArgument(f"samples_per_insert: {spi} must be a positive number")
        if self.min_size_to_sample < 1:
            raise InvalidArgument(f"min_size_to_sample: {self.min_size_to_sample} must be at least 1")
        if self.min_size_to_sample > buffer_size:
            raise InvalidArgument(f"min_size_to_sample: {self.min_size_to_sample:,} exceeds buffer_size "
                                  f"{buffer_size:,}; the buffer could never hold enough to sample")
        if math.isnan(low) or math.isnan(high) or low > high:
            raise InvalidArgument(f"error_buffer: the window [{low}, {high}] is empty")
        if self.is_min_size:
            return
        offset = spi * self.min_size_to_sample
        if low > offset:
            raise InvalidArgument(
                f"error_buffer: the window's low end {low:g} is above samples_per_insert x min_size_to_sample "
                f"= {offset:g}; sampling would deadlock as soon as the buffer holds min_size_to_sample")
        if high - low < 2 * max(1.0, spi):
            raise InvalidArgument(
                f"error_buffer: the window [{low:g}, {high:g}] is narrower than 2 x max(1, samples_per_insert) "
                f"= {2 * max(1.0, spi):g}; it could block samples and inserts alike")
        if not self.inserts_wait:
            return  # inserts always go on, so a waiting sample always gets what it waits for
        if high - low < spi * longest_episode + batch_size:
            raise InvalidArgument(
                f"error_buffer: the window [{low:g}, {high:g}] ({high - low:g} wide) must hold one whole episode "
                f"(samples_per_insert {spi:g} x {longest_episode:,} transitions, max_episode_length) plus one "
                f"batch (batch_size {batch_size:,}) = {spi * longest_episode + batch_size:g}, or a sample and "
                "an insert could both wait for ever; widen error_buffer, lower max_episode_length, or turn "
                "inserts_wait off")
        if self.min_size_to_sample > buffer_size - longest_episode:
            raise InvalidArgument(
                f"min_size_to_sample: {self.min_size_to_sample:,} is above buffer_size {buffer_size:,} minus the "
                f"longest episode ({longest_episode:,}, max_episode_length): evicting to make room could leave "
                "fewer transitions than samples wait for while inserts wait for samples; lower "
                "min_size_to_sample or max_episode_length, or turn inserts_wait off")

    def to_json(self) -> dict:
        return {"samples_per_insert": self.samples_per_insert, "min_size_to_sample": self.min_size_to_sample,
                "min_diff": _finite_or_name(self.min_diff), "max_diff": _finite_or_name(self.max_diff),
                "inserts_wait": self.inserts_wait}

    @classmethod
    def from_json(cls, data: dict) -> LimiterSettings:
        # float() reads the "inf" and "-inf" that to_json writes for an unbounded window.
        return cls(float(data["samples_per_insert"]), int(data["min_size_to_sample"]),
                   float(data["min_diff"]), float(data["max_diff"]), bool(data.get("inserts_wait", True)))


@dataclass
class SideStats:
    """The calls of one side (inserts or samples): how many waited and for how long, finished and pending."""

    calls: int = 0
    blocked_calls: int = 0
    blocked_seconds: float = 0.0
    pending: int = 0
    _pending_since: dict[int, float] = field(default_factory=dict, repr=False)

    def begin_wait(self, token: int) -> None:
        self.pending += 1
        self._pending_since[token] = time.monotonic()

    def end_wait(self, token: int) -> float:
        started = self._pending_since.pop(token, None)
        self.pending -= 1
        waited = 0.0 if started is None else time.monotonic() - started
        self.blocked_calls += 1
        self.blocked_seconds += waited
        return waited

    def pending_seconds(self) -> float:
        now = time.monotonic()
        return sum(now - started for started in self._pending_since.values())


@dataclass(frozen=True)
class Wait:
    """How long a call may wait for a limiter, and how the waiting learns that the call was given up.

    Attributes:
        seconds: the longest wait (its deadline, or the service's limiter_max_wait_s); 0: never wait.
        active: False once the caller is gone (a cancelled call, a closed stream).
        slots: the service's waiting calls (limiter_max_waiting); a wait that finds none left is refused.
    """

    seconds: float = 0.0
    active: Callable[[], bool] = lambda: True
    slots: threading.BoundedSemaphore | None = None


NO_WAIT = Wait()


@dataclass(frozen=True)
class LimiterStats:
    """What GetStats and /metrics report of a limiter."""

    settings: LimiterSettings
    paused: bool
    inserts: int
    samples: int
    can_insert: bool
    can_sample: bool
    inserts_blocked_calls: int
    inserts_blocked_seconds: float
    samples_blocked_calls: int
    samples_blocked_seconds: float
    inserts_waiting: int
    samples_waiting: int


@dataclass(frozen=True)
class LimiterState:
    """What a snapshot keeps of a limiter: its settings and counts (the waiting statistics are the process's)."""

    settings: LimiterSettings
    inserts: int
    samples: int
    paused: bool = False

    def to_json(self) -> dict:
        return {"settings": self.settings.to_json(), "inserts": self.inserts, "samples": self.samples,
                "paused": self.paused}

    @classmethod
    def from_json(cls, data: dict) -> LimiterState:
        return cls(LimiterSettings.from_json(data["settings"]), int(data["inserts"]), int(data["samples"]),
                   bool(data.get("paused", False)))


class RateLimiter:
    """Counts inserts and samples against one LimiterSettings; the caller holds the buffer's lock throughout."""

    def __init__(self, settings: LimiterSettings, inserts: int = 0, samples: int = 0, paused: bool = False) -> None:
        self.settings = settings
        self.inserts, self.samples, self.paused = inserts, samples, paused
        self.insert_stats, self.sample_stats = SideStats(), SideStats()

    @classmethod
    def rebased(cls, settings: LimiterSettings, size: int, paused: bool = False) -> RateLimiter:
        """A limiter for a buffer that already holds `size` transitions, as if they came in at the exact ratio.

        Counting them as inserts with no samples would hold every insert back until the learner caught up
        with all of them (Reverb #103's restored limiter that blocks for ever); counting them as sampled at
        the ratio puts the error where it stands after min_size_to_sample, the middle of a scalar window.
        """
        if settings.is_min_size:
            return cls(settings, size, 0, paused)
        sampled = settings.samples_per_insert * max(size - settings.min_size_to_sample, 0)
        return cls(settings, size, math.floor(sampled), paused)

    @property
    def state(self) -> LimiterState:
        return LimiterState(self.settings, self.inserts, self.samples, self.paused)

    def error(self) -> float:
        """inserts x samples_per_insert - samples: what the window bounds."""
        return self.inserts * self.settings.samples_per_insert - self.samples

    def can_sample(self, size: int, count: int) -> bool:
        if self.paused:
            return True
        if size < self.settings.min_size_to_sample:
            return False
        return self.error() - count >= self.settings.min_diff

    def can_insert(self, size: int, count: int) -> bool:
        if self.paused or not self.settings.inserts_wait:
            return True
        if size + count <= self.settings.min_size_to_sample:
            return True  # until min size is reached, inserts are free
        return (self.inserts + count) * self.settings.samples_per_insert - self.samples <= self.settings.max_diff

    def allows(self, side: str, size: int, count: int) -> bool:
        return self.can_insert(size, count) if side == INSERT else self.can_sample(size, count)

    def side_stats(self, side: str) -> SideStats:
        return self.insert_stats if side == INSERT else self.sample_stats

    def stats(self, size: int, batch_size: int) -> LimiterStats:
        """The limiter now: whether one transition could go in and one batch come out, and the waits so far."""
        ins, smp = self.insert_stats, self.sample_stats
        return LimiterStats(
            settings=self.settings, paused=self.paused, inserts=self.inserts, samples=self.samples,
            can_insert=self.can_insert(size, 1), can_sample=self.can_sample(size, batch_size),
            inserts_blocked_calls=ins.blocked_calls + ins.pending,
            inserts_blocked_seconds=ins.blocked_seconds + ins.pending_seconds(),
            samples_blocked_calls=smp.blocked_calls + smp.pending,
            samples_blocked_seconds=smp.blocked_seconds + smp.pending_seconds(),
            inserts_waiting=ins.pending, samples_waiting=smp.pending)

    def inserted(self, count: int) -> None:
        self.inserts += count
        self.insert_stats.calls += 1

    def sampled(self, count: int) -> None:
        self.samples += count
        self.sample_stats.calls += 1

    def describe(self, size: int) -> dict[str, str]:
        """The state a refused wait reports (string values: they travel as the error's details)."""
        s = self.settings
        return {"samples_per_insert": f"{s.samples_per_insert:g}", "min_size_to_sample": str(s.min_size_to_sample),
                "min_diff": f"{s.min_diff:g}", "max_diff": f"{s.max_diff:g}", "inserts": str(self.inserts),
                "samples": str(self.samples), "size": str(size), "error": f"{self.error():g}",
                "paused": str(self.paused).lower()}


def _finite_or_name(value: float) -> float | str:
    """JSON has no infinity: the unbounded ends of a MinSize window are written as text."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
