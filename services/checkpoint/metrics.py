"""The checkpoint service's Prometheus metrics: saves and staging sweeps, counted where they happen.

    rewind_checkpoint_saves_total                      checkpoints committed
    rewind_checkpoint_save_failures_total{code}        saves that ended without a commit, by status code
    rewind_checkpoint_saved_bytes_total                bytes of the committed checkpoints (files and snapshots)
    rewind_checkpoint_save_duration_seconds            from the Save call's first message to its commit
    rewind_checkpoint_staging_sweeps_total             staging clean-ups run (at start and every clean_interval_s)
    rewind_checkpoint_staging_removed_total            stale objects and multipart uploads they removed
    rewind_checkpoint_blocks_deleted_total             buffer blocks deleted when the last checkpoint needing them went
    rewind_checkpoint_blocks_swept_total               unused buffer blocks the staging sweeps removed

The counts belong to one Catalog (`stats_of`), so each service in a process
(tests run several) reports its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import grpc
from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from rewind.errors import RewindError
from rewind_runtime.metrics import DURATION_BUCKETS


class CheckpointStats:
    """Counters of one catalog's saves and sweeps (not registered anywhere until a collector serves them)."""

    def __init__(self) -> None:
        self.saves = Counter("rewind_checkpoint_saves", "Checkpoints committed", registry=None)
        self.failures = Counter("rewind_checkpoint_save_failures", "Saves that ended without a commit, by the "
                                "status code they were answered with", ("code",), registry=None)
        self.bytes = Counter("rewind_checkpoint_saved_bytes", "Bytes of the committed checkpoints (files and buffer "
                             "snapshots)", registry=None)
        self.duration = Histogram("rewind_checkpoint_save_duration_seconds", "Seconds from a Save's first message "
                                  "to its commit", buckets=DURATION_BUCKETS, registry=None)
        self.sweeps = Counter("rewind_checkpoint_staging_sweeps", "Staging clean-ups run", registry=None)
        self.removed = Counter("rewind_checkpoint_staging_removed", "Stale staging objects and multipart uploads "
                               "the clean-ups removed", registry=None)
        self.blocks_deleted = Counter("rewind_checkpoint_blocks_deleted", "Buffer blocks deleted when retention "
                                      "or a delete removed the last checkpoint needing them", registry=None)
        self.blocks_swept = Counter("rewind_checkpoint_blocks_swept", "Unused buffer blocks (left by crashes and "
                                    "aborted saves) the staging clean-ups removed", registry=None)

    def committed(self, nbytes: int, seconds: float) -> None:
        self.saves.inc()
        self.bytes.inc(nbytes)
        self.duration.observe(seconds)

    def failed(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, RewindError) else grpc.StatusCode.INTERNAL
        self.failures.labels(code.name).inc()

    def swept(self, removed: int) -> None:
        self.sweeps.inc()
        self.removed.inc(removed)

    def metrics(self) -> list:
        return [self.saves, self.failures, self.bytes, self.duration, self.sweeps, self.removed,
                self.blocks_deleted, self.blocks_swept]


_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stats_of(catalog: object) -> CheckpointStats:
    """The counters of `catalog` (made at first use; they go with it)."""
    stats = _STATS.get(catalog)
    if stats is None:
        stats = _STATS.setdefault(catalog, CheckpointStats())
    return stats


class CheckpointCollector(Collector):
    """Serves one catalog's counters on a host's registry."""

    def __init__(self, catalog: object) -> None:
        self.stats = stats_of(catalog)

    def collect(self) -> Iterator[Metric]:
        for metric in self.stats.metrics():
            yield from metric.collect()
