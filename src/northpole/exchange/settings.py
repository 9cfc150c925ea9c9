"""Settings of the exchange service (the ``exchange`` group: ``NORTHPOLE_EXCHANGE__*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ExchangeSettings(BaseModel):
    """The exchange service.

    Attributes:
        max_participants: Most participants one exchange may have (the solve is O(n^3)).
        max_batch: Most participants one registration request may carry.
        default_budget_tolerance: ``rules.budget_tolerance`` when a new exchange
            does not give one; ``None``: budgets do not constrain the matching.
        stale_matching_s: An exchange left in MATCHING longer than this (its
            solver died with its process) may be matched again.
        write_retries: Optimistic transactions retried this often on contention
            before answering 503.
        busy_timeout_ms: How long the SQLite store waits for another process's lock.
    """

    max_participants: int = Field(default=5_000, ge=2, le=100_000)
    max_batch: int = Field(default=5_000, ge=1, le=100_000)
    default_budget_tolerance: float | None = Field(default=None, ge=0)
    stale_matching_s: float = Field(default=3_600.0, gt=0)
    write_retries: int = Field(default=50, ge=1, le=10_000)
    busy_timeout_ms: int = Field(default=10_000, ge=0)
