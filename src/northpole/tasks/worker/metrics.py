"""The worker side's metrics: handler durations, utilization and outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from northpole.core.metrics import Children

#: Task processing time buckets in seconds, 1 ms to 10 min.
PROCESSING_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


@dataclass(slots=True)
class WorkerMetrics:
    """The worker side's metrics on one registry."""

    processing: Histogram
    utilization: Gauge
    outcomes: Counter
    outcome: Children[Counter] = field(init=False)
    processing_of: Children[Histogram] = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = Children(self.outcomes)
        self.processing_of = Children(self.processing)

    @classmethod
    def register(cls, registry: CollectorRegistry) -> WorkerMetrics:
        """Create the metrics on ``registry``."""
        return cls(
            processing=Histogram(
                "worker_handler_duration_seconds",
                "Time a handler ran, by task type (this worker; the server's "
                "task_processing_duration_seconds covers every worker).",
                ["task_type"],
                buckets=PROCESSING_BUCKETS,
                registry=registry,
            ),
            utilization=Gauge(
                "worker_busy_ratio",
                "Handlers running divided by the pool's concurrency (this worker; the "
                "server's worker_utilization is reported from heartbeats).",
                ["worker_id"],
                registry=registry,
            ),
            outcomes=Counter(
                "worker_tasks",
                "Attempts a worker finished, by task type and outcome "
                "(completed, failed, cancelled, refused).",
                ["task_type", "outcome"],
                registry=registry,
            ),
        )
