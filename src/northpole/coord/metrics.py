"""Prometheus metrics of the coordination layer, on the app's explicit registry."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(slots=True)
class CoordMetrics:
    """Lease health, registrations and leader changes.

    ``consensus_leader_changes_total`` counts the terms this process won: summed
    over the candidates of an election it is the number of leader changes
    (the design's ``consensus_leader_changes``).
    """

    keepalive_failures: Counter
    leases_lost: Counter
    lease_remaining: Gauge
    leader_changes: Counter
    is_leader: Gauge
    health_checks: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> CoordMetrics:
        """Create the metrics on ``registry``."""
        return cls(
            keepalive_failures=Counter(
                "coord_lease_keepalive_failures",
                "Lease keepalives that failed or timed out, by lease purpose.",
                ["purpose"],
                registry=registry,
            ),
            leases_lost=Counter(
                "coord_leases_lost",
                "Leases given up because etcd dropped them or their local deadline passed.",
                ["purpose"],
                registry=registry,
            ),
            lease_remaining=Gauge(
                "coord_lease_remaining_seconds",
                "Seconds until the local deadline of the lease, at the last keepalive.",
                ["purpose"],
                registry=registry,
            ),
            leader_changes=Counter(
                "consensus_leader_changes",
                "Times this process became the leader of an election.",
                ["election"],
                registry=registry,
            ),
            is_leader=Gauge(
                "consensus_is_leader",
                "1 while this process leads the election, else 0.",
                ["election"],
                registry=registry,
            ),
            health_checks=Counter(
                "coord_health_checks",
                "Health checks run for service registrations, by service and result.",
                ["service", "health"],
                registry=registry,
            ),
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, CoordMetrics] = (
    weakref.WeakKeyDictionary()
)


def coord_metrics(registry: CollectorRegistry) -> CoordMetrics:
    """Return the coordination metrics of ``registry``, creating them on first use.

    The allocator, the registrar and elections of one app share one registry,
    and a metric can be registered on it only once.
    """
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = CoordMetrics.register(registry)
    return metrics
