"""Settings of the gift registry (the ``registry`` group: ``NORTHPOLE_REGISTRY__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class LifecycleTaskTypes(BaseModel):
    """The task types whose events move a gift along its lifecycle.

    Attributes:
        build: Starting one puts the gift IN_PRODUCTION.
        wrap: Completing one makes it WRAPPED.
        load: Completing one makes it LOADED.
        deliver: Completing one makes it DELIVERED.
    """

    build: str = Field(default="build", min_length=1, max_length=100)
    wrap: str = Field(default="wrap", min_length=1, max_length=100)
    load: str = Field(default="load", min_length=1, max_length=100)
    deliver: str = Field(default="deliver", min_length=1, max_length=100)


class RegistrySettings(BaseModel):
    """The gift registry.

    Attributes:
        database_url: ``postgresql://user:pass@host:port/db`` (cluster edition);
            ``None`` keeps gifts in ``<data_dir>/registry.db`` (SQLite).
        pool_size: PostgreSQL connections kept open per process.
        retention_months: Monthly partitions whose whole month ended more than this
            many months before the current one are detached and archived.
        partitions_ahead: Monthly partitions kept created ahead of the current month.
        archive_dir: Where archived partitions go; ``None``: ``<data_dir>/archive``.
        upkeep_interval_s: How often partitions are created ahead and old ones archived.
        cache_size: Gifts kept in the in-process LRU cache (0 turns it off).
        cache_ttl_s: Longest a cached gift is served (bounds staleness when other
            processes change gifts).
        max_batch: Most gifts one create request may carry.
        outbox_batch: Most outbox rows relayed per publish.
        follow_batch: Most task events turned into status changes per transaction.
        busy_timeout_ms: How long the SQLite store waits for another process's lock.
        task_types: The task types of the lifecycle.
    """

    database_url: str | None = None
    pool_size: int = Field(default=8, ge=1, le=200)
    retention_months: int = Field(default=12, ge=1, le=1200)
    partitions_ahead: int = Field(default=3, ge=1, le=120)
    archive_dir: Path | None = None
    upkeep_interval_s: float = Field(default=3_600.0, gt=0)
    cache_size: int = Field(default=100_000, ge=0)
    cache_ttl_s: float = Field(default=5.0, gt=0)
    max_batch: int = Field(default=10_000, ge=1, le=100_000)
    outbox_batch: int = Field(default=1_000, ge=1, le=100_000)
    follow_batch: int = Field(default=1_000, ge=1, le=100_000)
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    task_types: LifecycleTaskTypes = LifecycleTaskTypes()
