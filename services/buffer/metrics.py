"""The buffer service's Prometheus metrics: each buffer's state, read from its stats at scrape time.

    rewind_buffer_transitions{buffer}                  transitions stored
    rewind_buffer_episodes{buffer}                     episodes stored
    rewind_buffer_capacity_transitions{buffer}         buffer_size
    rewind_buffer_ready{buffer}                        1 once min_history transitions are stored
    rewind_buffer_storage_bytes{buffer, device}        bytes of storage, and where it lives (cpu, cuda:0; none yet)
    rewind_buffer_episodes_added_total{buffer}         episodes inserted (AddEpisodes, restores)
    rewind_buffer_episodes_evicted_total{buffer}       episodes dropped to make room
    rewind_buffer_batches_sampled_total{buffer}        batches sampled
    rewind_buffer_writer_episodes{buffer, writer}      episodes stored, per writer (routing key's; "" without one)
    rewind_buffer_writer_policy_version{buffer, writer}  the policy version of the writer's latest episode

and, for a buffer with a rate limiter (rewind_buffer.rate_limiter):

    rewind_buffer_rate_limiter_inserts_total{buffer}   transitions the limiter counted in
    rewind_buffer_rate_limiter_samples_total{buffer}   sequences the limiter counted out
    rewind_buffer_rate_limiter_can_insert{buffer}      1 if one more transition would go in now
    rewind_buffer_rate_limiter_can_sample{buffer}      1 if one more batch would come out now
    rewind_buffer_rate_limiter_paused{buffer}          1 while paused
    rewind_buffer_rate_limiter_waiting{buffer, side}   calls waiting now (side: insert, sample)
    rewind_buffer_rate_limiter_blocked_calls_total{buffer, side}    calls that had to wait
    rewind_buffer_rate_limiter_blocked_seconds_total{buffer, side}  seconds they waited

The counters are the buffer's own: a ResetBuffer starts them again from zero,
which Prometheus' rate() reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rewind_buffer.rate_limiter import LimiterStats
from rewind_buffer.registry import BufferRegistry


class BufferCollector(Collector):
    """Reads every buffer of `registry` when Prometheus scrapes."""

    def __init__(self, registry: BufferRegistry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []  # the buffers change; describe nothing rather than collect at registration

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "transitions": GaugeMetricFamily("rewind_buffer_transitions", "Transitions stored", labels=["buffer"]),
            "episodes": GaugeMetricFamily("rewind_buffer_episodes", "Episodes stored", labels=["buffer"]),
            "capacity": GaugeMetricFamily("rewind_buffer_capacity_transitions", "Transitions the buffer holds at "
                                          "most (buffer_size)", labels=["buffer"]),
            "ready": GaugeMetricFamily("rewind_buffer_ready", "1 once min_history transitions are stored (Sample "
                                       "answers), else 0", labels=["buffer"]),
            "bytes": GaugeMetricFamily("rewind_buffer_storage_bytes", "Bytes of the buffer's storage, by the device "
                                       "it lives on (none before the first episode)", labels=["buffer", "device"]),
            # Labelled by writer: a buffer keeps at most rewind_buffer.origins.MAX_WRITERS of them.
            "writer_episodes": GaugeMetricFamily("rewind_buffer_writer_episodes", "Episodes stored, by the writer "
                                                 "that added them (\"\": no routing key)", labels=["buffer", "writer"]),
            "writer_version": GaugeMetricFamily("rewind_buffer_writer_policy_version", "The policy version the "
                                                "writer's latest episode was collected with",
                                                labels=["buffer", "writer"]),
        }
        counters = {
            "added": CounterMetricFamily("rewind_buffer_episodes_added", "Episodes inserted (AddEpisodes, "
                                         "restores) since the buffer was created or reset", labels=["buffer"]),
            "evicted": CounterMetricFamily("rewind_buffer_episodes_evicted", "Episodes dropped to make room",
                                           labels=["buffer"]),
            "sampled": CounterMetricFamily("rewind_buffer_batches_sampled", "Batches sampled", labels=["buffer"]),
        }
        limiter = _limiter_families()
        for buffer in self.registry.buffers():
            stats = buffer.stats()
            name = [stats.name]
            gauges["transitions"].add_metric(name, stats.transitions)
            gauges["episodes"].add_metric(name, stats.episodes)
            gauges["capacity"].add_metric(name, stats.settings.buffer_size)
            gauges["ready"].add_metric(name, 1 if stats.ready else 0)
            gauges["bytes"].add_metric([stats.name, stats.device or "none"], stats.bytes)
            counters["added"].add_metric(name, stats.episodes_added)
            counters["evicted"].add_metric(name, stats.episodes_evicted)
            counters["sampled"].add_metric(name, stats.batches_sampled)
            for writer in stats.writers:
                gauges["writer_episodes"].add_metric([stats.name, writer.writer], writer.episodes)
                gauges["writer_version"].add_metric([stats.name, writer.writer], writer.latest_policy_version)
            if stats.limiter is not None:
                _add_limiter(limiter, stats.name, stats.limiter)
        yield from gauges.values()
        yield from counters.values()
        yield from limiter.values()


def _limiter_families() -> dict[str, Metric]:
    prefix, by_side = "rewind_buffer_rate_limiter", ["buffer", "side"]
    return {
        "inserts": CounterMetricFamily(f"{prefix}_inserts", "Transitions the rate limiter counted in",
                                       labels=["buffer"]),
        "samples": CounterMetricFamily(f"{prefix}_samples", "Sequences the rate limiter counted out",
                                       labels=["buffer"]),
        "can_insert": GaugeMetricFamily(f"{prefix}_can_insert", "1 if one more transition would go in now",
                                        labels=["buffer"]),
        "can_sample": GaugeMetricFamily(f"{prefix}_can_sample", "1 if one more batch would come out now",
                                        labels=["buffer"]),
        "paused": GaugeMetricFamily(f"{prefix}_paused", "1 while the rate limiter is paused", labels=["buffer"]),
        "waiting": GaugeMetricFamily(f"{prefix}_waiting", "Calls waiting for the rate limiter now", labels=by_side),
        "blocked_calls": CounterMetricFamily(f"{prefix}_blocked_calls", "Calls that had to wait for the rate "
                                             "limiter (those waiting now included)", labels=by_side),
        "blocked_seconds": CounterMetricFamily(f"{prefix}_blocked_seconds", "Seconds calls waited for the rate "
                                               "limiter (those waiting now included)", labels=by_side),
    }


def _add_limiter(families: dict[str, Metric], buffer: str, stats: LimiterStats) -> None:
    families["inserts"].add_metric([buffer], stats.inserts)
    families["samples"].add_metric([buffer], stats.samples)
    families["can_insert"].add_metric([buffer], int(stats.can_insert))
    families["can_sample"].add_metric([buffer], int(stats.can_sample))
    families["paused"].add_metric([buffer], int(stats.paused))
    for side in ("inserts", "samples"):
        label = [buffer, side.removesuffix("s")]
        families["waiting"].add_metric(label, getattr(stats, f"{side}_waiting"))
        families["blocked_calls"].add_metric(label, getattr(stats, f"{side}_blocked_calls"))
        families["blocked_seconds"].add_metric(label, getattr(stats, f"{side}_blocked_seconds"))
