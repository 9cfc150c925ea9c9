"""The exchange service's metrics, named in one place.

No metric carries a participant id or anything about who gives to whom:
labels are the exchange's region, a phase or an outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from northpole.exchange.model import Phase

#: Solve time buckets in seconds, 1 ms to 30 minutes (the solve is O(n^3)).
MATCHING_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)


class Outcome:
    """Values of the ``outcome`` label of ``exchange_solves_total``."""

    COMMITTED = "committed"
    INFEASIBLE = "infeasible"
    INVALID = "invalid"
    FAILED = "failed"
    ALL = (COMMITTED, INFEASIBLE, INVALID, FAILED)


@dataclass(slots=True)
class ExchangeMetrics:
    """Server-side exchange metrics on one registry."""

    matching: Histogram
    solves: Counter
    exchanges: Gauge
    participants: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> ExchangeMetrics:
        """Create the metrics on ``registry``."""
        metrics = cls(
            matching=Histogram(
                "matching_duration_seconds",
                "Time to solve and seal one exchange's matching, by the exchange's region.",
                ["region"],
                buckets=MATCHING_BUCKETS,
                registry=registry,
            ),
            solves=Counter(
                "exchange_solves",
                "Match requests that ran the matcher, by region and outcome.",
                ["region", "outcome"],
                registry=registry,
            ),
            exchanges=Gauge(
                "exchange_exchanges",
                "Exchanges in the store, by phase.",
                ["phase"],
                registry=registry,
            ),
            participants=Counter(
                "exchange_participants_registered",
                "Participants registered (removals not subtracted).",
                registry=registry,
            ),
        )
        for phase in Phase:
            metrics.exchanges.labels(phase.value).set(0)
        return metrics

    def set_phases(self, counts: Mapping[Phase, int]) -> None:
        """Set the by-phase gauge (phases absent from ``counts`` are 0)."""
        for phase in Phase:
            self.exchanges.labels(phase.value).set(counts.get(phase, 0))
