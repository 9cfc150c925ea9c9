"""Prometheus metrics on an explicit registry, never the process-global default one.

Each app owns one :class:`prometheus_client.CollectorRegistry`; parts register
their own metrics on it (see ``idgen/metrics.py``). Names follow
``<part>_<noun>_<unit|total>`` with low-cardinality labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Children", "HttpMetrics", "new_registry", "render"]

_M = TypeVar("_M", Counter, Gauge, Histogram)


class Children(Generic[_M]):
    """A labelled metric's children by label values, each looked up once.

    ``metric.labels(...)`` takes a lock and validates the values on every call; code
    that runs per task or per event calls ``children(*values)`` instead, which
    remembers each child (label sets are few: task types, states, outcomes).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        """The child of ``values`` (created on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


#: Request latency buckets in seconds, 0.25 ms to 10 s.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


def new_registry() -> CollectorRegistry:
    """Return a fresh, empty registry."""
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> bytes:
    """Return the registry in the Prometheus text exposition format."""
    return generate_latest(registry)


@dataclass(slots=True)
class HttpMetrics:
    """Request count and latency of every HTTP route, labelled by route template."""

    requests: Counter
    duration: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> HttpMetrics:
        """Create the HTTP metrics on ``registry``."""
        return cls(
            requests=Counter(
                "http_requests",
                "HTTP requests served, by route template and status code.",
                ["method", "route", "status"],
                registry=registry,
            ),
            duration=Histogram(
                "http_request_duration_seconds",
                "HTTP request latency in seconds, by route template.",
                ["method", "route"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
