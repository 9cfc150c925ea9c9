"""The gift registry's metrics, named in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from northpole.core.metrics import LATENCY_BUCKETS
from northpole.registry.model import GiftStatus


class _RelayedCollector(Collector):
    """``registry_outbox_relayed_total``, read from the relay's own count when scraped."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "registry_outbox_relayed",
            "Outbox events published to the event stream by this process.",
            value=self._read(),
        )


@dataclass(slots=True)
class RegistryMetrics:
    """Gift registry metrics on one registry."""

    created: Counter
    status_changes: Counter
    task_events: Counter
    cache_lookups: Counter
    cache_size: Gauge
    outbox_pending: Gauge
    write_duration: Histogram
    partitions_archived: Counter
    _registry: CollectorRegistry

    @classmethod
    def register(cls, registry: CollectorRegistry) -> RegistryMetrics:
        """Create the metrics on ``registry``."""
        metrics = cls(
            created=Counter(
                "registry_gifts_created", "Gifts registered by this process.", registry=registry
            ),
            status_changes=Counter(
                "registry_status_changes",
                "Gift status changes made by this process, by the status entered.",
                ["status"],
                registry=registry,
            ),
            task_events=Counter(
                "registry_task_events",
                "Task events read from the bus, by outcome (followed, ignored, dropped).",
                ["outcome"],
                registry=registry,
            ),
            cache_lookups=Counter(
                "registry_cache_lookups",
                "Lookups by id, by result (hit or miss) of the in-process cache.",
                ["result"],
                registry=registry,
            ),
            cache_size=Gauge(
                "registry_cache_entries", "Gifts in the in-process cache.", registry=registry
            ),
            outbox_pending=Gauge(
                "registry_outbox_pending",
                "Events waiting in the outbox table (sampled).",
                registry=registry,
            ),
            write_duration=Histogram(
                "registry_write_duration_seconds",
                "Database write time, by operation.",
                ["operation"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            partitions_archived=Counter(
                "registry_partitions_archived",
                "Monthly partitions detached and archived by this process.",
                registry=registry,
            ),
            _registry=registry,
        )
        for status in GiftStatus:
            metrics.status_changes.labels(status.value)
        for outcome in ("followed", "ignored", "dropped"):
            metrics.task_events.labels(outcome)
        for result in ("hit", "miss"):
            metrics.cache_lookups.labels(result)
        return metrics

    def watch_relay(self, read: Callable[[], int]) -> Callable[[], None]:
        """Export the relay's count; return the function that stops exporting it."""
        collector = _RelayedCollector(read)
        self._registry.register(collector)
        return lambda: self._registry.unregister(collector)
