"""The buffer service's Prometheus metrics: each buffer's state, read from its stats at scrape time.

    rewind_buffer_transitions{buffer}                  transitions stored
    rewind_buffer_episodes{buffer}                     episodes stored
    rewind_buffer_capacity_transitions{buffer}         buffer_size
    rewind_buffer_ready{buffer}                        1 once min_history transitions are stored
    rewind_buffer_storage_bytes{buffer, device}        bytes of storage, and where it lives (cpu, cuda:0; none yet)
    rewind_buffer_episodes_added_total{buffer}         episodes inserted (AddEpisodes, restores)
    rewind_buffer_episodes_evicted_total{buffer}       episodes dropped to make room
    rewind_buffer_batches_sampled_total{buffer}        batches sampled

The counters are the buffer's own: a ResetBuffer starts them again from zero,
which Prometheus' rate() reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
        }
        counters = {
            "added": CounterMetricFamily("rewind_buffer_episodes_added", "Episodes inserted (AddEpisodes, "
                                         "restores) since the buffer was created or reset", labels=["buffer"]),
            "evicted": CounterMetricFamily("rewind_buffer_episodes_evicted", "Episodes dropped to make room",
                                           labels=["buffer"]),
            "sampled": CounterMetricFamily("rewind_buffer_batches_sampled", "Batches sampled", labels=["buffer"]),
        }
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
        yield from gauges.values()
        yield from counters.values()
