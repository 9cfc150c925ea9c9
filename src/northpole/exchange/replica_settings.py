"""Settings of the exchange matcher replicas (the ``matcher`` group: ``NORTHPOLE_MATCHER__*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ReplicaSettings(BaseModel):
    """Three matcher replicas: leader election, votes and the two-phase commit.

    Attributes:
        replicas: How many replicas vote; a commit needs a majority of yes votes.
        vote_timeout_s: How long the leader waits for the followers' votes.
        cost_tolerance: A follower accepts a proposal whose cost is at most
            ``(1 + cost_tolerance)`` times its own solve's, unless both are proven
            optimal (then the proposal's must not be higher at all).
        batch_ops: Sealed matches per prepare transaction (at most etcd's ``--max-txn-ops``).
        batch_concurrency: Prepare transactions in flight at once.
        forward_timeout_s: How long a follower waits for the leader to answer a forwarded write.
        leader_wait_s: How long a request waits for a leader to be known (or to finish
            recovering) before it gets 503.
        failpoint: Test-only: the leader stops for good at this two-phase step
            (``prepare``, ``prepare_batch``, ``prepared``, ``voted``, ``committed``),
            so a fault test can kill it exactly there. Never set it in production.
    """

    replicas: int = Field(default=3, ge=1, le=9)
    vote_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    cost_tolerance: float = Field(default=0.02, ge=0, le=1)
    batch_ops: int = Field(default=128, ge=1, le=10_000)
    batch_concurrency: int = Field(default=4, ge=1, le=64)
    forward_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    leader_wait_s: float = Field(default=10.0, ge=0, le=600)
    failpoint: str | None = None


class _ReplicaEnv(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NORTHPOLE_", env_nested_delimiter="__", extra="ignore"
    )

    matcher: ReplicaSettings = ReplicaSettings()


def replica_settings_from_env() -> ReplicaSettings:
    """Read the ``matcher`` group from ``NORTHPOLE_MATCHER__*`` (until ``Settings`` carries it)."""
    return _ReplicaEnv().matcher
