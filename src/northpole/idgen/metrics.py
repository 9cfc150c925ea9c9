"""Every metric of the Gift ID service, named in one place.

Prometheus recording rules in ``deploy/prometheus/`` derive the design's
``gift_id_generation_rate`` and ``gift_id_collision_count`` from these.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(slots=True)
class IdGenMetrics:
    """The Gift ID service's metrics on one registry."""

    generated: Counter
    collisions: Counter
    clock_backwards: Counter
    workshop: Gauge
    leases_lost: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> IdGenMetrics:
        """Create the metrics on ``registry``."""
        metrics = cls(
            generated=Counter(
                "gift_id_generated", "Gift IDs issued by this instance.", registry=registry
            ),
            collisions=Counter(
                "gift_id_collisions",
                "Duplicate Gift IDs seen by the sampling collision detector (must stay 0).",
                registry=registry,
            ),
            clock_backwards=Counter(
                "gift_id_clock_backwards",
                "Times the clock was seen behind the last issued timestamp, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            workshop=Gauge(
                "gift_id_workshop_id",
                "The workshop id this instance issues with (-1 before it has one).",
                ["source"],
                registry=registry,
            ),
            leases_lost=Counter(
                "gift_id_workshop_leases_lost",
                "Times the workshop id lease was lost and a new one had to be taken.",
                registry=registry,
            ),
        )
        for outcome in ("waited", "refused"):
            metrics.clock_backwards.labels(outcome)
        return metrics

    def clock_went_back(self, behind_ms: int, refused: bool) -> None:
        """Count one backwards jump; matches the generator's hook signature."""
        self.clock_backwards.labels("refused" if refused else "waited").inc()
