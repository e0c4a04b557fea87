"""Which of a run's checkpoints to keep.

A checkpoint is kept if any rule keeps it: one of the `keep_last` most
recently committed, a step that is a multiple of `keep_every`, or one of the
`keep_best` best by `metric`. keep_last=0 turns retention off. Retention only ever considers committed
checkpoints, and only runs after a newer checkpoint commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import InvalidArgument
from rewind_checkpoint.manifest import Manifest

DEFAULT_KEEP_LAST = 3  # seed 003's --keep-last-n-checkpoints default
MODES = ("max", "min")


MAX_METRIC_CHARS = 100  # a metric's name, as the trainer reports it (eval_return)


@dataclass(frozen=True)
class RetentionPolicy:
    """A run's retention rules (see module docstring)."""

    keep_last: int = DEFAULT_KEEP_LAST
    keep_every: int = 0
    keep_best: int = 0
    metric: str = ""
    mode: str = "max"

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every", "keep_best"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"retention.{name}: must be zero or more, got {getattr(self, name)}")
        if self.mode not in MODES:
            raise InvalidArgument(f"retention.mode: must be 'max' or 'min', got {self.mode!r}")
        if len(self.metric) > MAX_METRIC_CHARS or not self.metric.isprintable():
            raise InvalidArgument(f"retention.metric: a metric name is printable and at most {MAX_METRIC_CHARS} "
                                  f"characters, got {len(self.metric)}")
        if self.keep_best and not self.metric:
            raise InvalidArgument("retention.metric: keep_best needs the name of the metric to rank by")

    @classmethod
    def from_proto(cls, msg: checkpoint_pb2.RetentionPolicy) -> RetentionPolicy:
        """Proto -> policy; an unset keep_last means the default, 3."""
        keep_last = msg.keep_last if msg.HasField("keep_last") else DEFAULT_KEEP_LAST
        return cls(keep_last=keep_last, keep_every=msg.keep_every, keep_best=msg.keep_best, metric=msg.metric,
                   mode=msg.mode or "max")

    def to_proto(self) -> checkpoint_pb2.RetentionPolicy:
        return checkpoint_pb2.RetentionPolicy(**asdict(self))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> RetentionPolicy:
        return cls(**json.loads(data))

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last == 0


def commit_order(manifests: Sequence[Manifest]) -> list[Manifest]:
    """Oldest commit first (ties, which need the same microsecond, broken by step)."""
    return sorted(manifests, key=lambda m: (m.created, m.step))


def rank_best(manifests: Sequence[Manifest], metric: str, mode: str) -> list[Manifest]:
    """Checkpoints that report `metric`, best first; ties go to the newer commit."""
    newest_first = commit_order([m for m in manifests if metric in m.metrics])[::-1]
    # sorted() is stable, so equal scores keep newest-first order.
    return sorted(newest_first, key=lambda m: m.metrics[metric], reverse=(mode == "max"))


def to_delete(manifests: Sequence[Manifest], policy: RetentionPolicy) -> list[Manifest]:
    """The committed checkpoints no rule keeps."""
    if policy.keeps_everything:
        return []
    ordered = commit_order(manifests)
    kept: set[tuple[int, str]] = set()
    if policy.keep_last:
        kept |= {(m.step, m.created) for m in ordered[-policy.keep_last:]}
    if policy.keep_every:
        kept |= {(m.step, m.created) for m in ordered if m.step % policy.keep_every == 0}
    if policy.keep_best:
        kept |= {(m.step, m.created) for m in rank_best(ordered, policy.metric, policy.mode)[: policy.keep_best]}
    return [m for m in ordered if (m.step, m.created) not in kept]
