"""The task queue's metrics, named in one place (the design's names plus transitions)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from northpole.core.metrics import Children
from northpole.tasks.model import TaskEvent, TaskState

#: Processing time buckets in seconds, 1 ms to 10 minutes.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 600.0)


@dataclass(slots=True)
class TaskMetrics:
    """Server-side task queue metrics on one registry."""

    depth: Gauge
    processing: Histogram
    transitions: Counter
    utilization: Gauge
    desired_workers: Gauge
    _worker_labels: set[str] = field(default_factory=set)
    _depth_labels: set[tuple[str, str]] = field(default_factory=set)
    transition: Children[Counter] = field(init=False)
    processing_of: Children[Histogram] = field(init=False)

    def __post_init__(self) -> None:
        self.transition = Children(self.transitions)
        self.processing_of = Children(self.processing)

    @classmethod
    def register(cls, registry: CollectorRegistry) -> TaskMetrics:
        """Create the metrics on ``registry``."""
        metrics = cls(
            depth=Gauge(
                "task_queue_depth",
                "PENDING tasks by queue (task type) and priority.",
                ["queue", "priority"],
                registry=registry,
            ),
            processing=Histogram(
                "task_processing_duration_seconds",
                "Time from a task's start to its completion, by task type.",
                ["task_type"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            transitions=Counter(
                "task_transitions",
                "Task state changes, by the state entered.",
                ["state"],
                registry=registry,
            ),
            utilization=Gauge(
                "worker_utilization",
                "Tasks a worker holds divided by its concurrency.",
                ["worker_id"],
                registry=registry,
            ),
            desired_workers=Gauge(
                "task_desired_workers",
                "Autoscaling signal: workers needed per consumer group.",
                ["group"],
                registry=registry,
            ),
        )
        for state in TaskState:
            metrics.transitions.labels(state.value)
        return metrics

    def count(self, events: Iterable[TaskEvent]) -> None:
        """Count transitions; observe processing time is done on completion by the service."""
        for event in events:
            self.transition(event.new_state.value).inc()

    def set_depths(self, depths: dict[tuple[str, str], int]) -> None:
        """Replace the depth gauge's values, dropping label sets that emptied."""
        for labels in self._depth_labels - depths.keys():
            self.depth.remove(*labels)
        for labels, value in depths.items():
            self.depth.labels(*labels).set(value)
        self._depth_labels = set(depths)

    def set_utilization(self, values: dict[str, float]) -> None:
        """Replace the utilization gauge's values, dropping forgotten workers."""
        for worker_id in self._worker_labels - values.keys():
            self.utilization.remove(worker_id)
        for worker_id, value in values.items():
            self.utilization.labels(worker_id).set(value)
        self._worker_labels = set(values)
