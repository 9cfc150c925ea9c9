"""A lease's local deadline: until when its holder may act, on its own monotonic clock.

etcd expires a lease ``TTL`` seconds after the leader *receives* the last
keepalive. That moment is after the holder *sent* it, so ``sent + TTL`` on the
holder's clock is never later than the real expiry (clocks run at the same
rate up to a tiny drift, which the margin covers). The holder stops at
``sent + TTL x (1 - margin_ratio)``: before anyone else can take what the lease
guards, whatever happened in between (a network partition, an etcd leader
change, a process paused by ``SIGSTOP``: the monotonic clock keeps counting
while a process is stopped).

This module is pure: times are plain floats from the caller's monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LeaseDeadline:
    """The latest moment the holder of a lease may still act.

    Args:
        margin_ratio: The share of each granted TTL given up for safety (0 < r < 0.5).
    """

    margin_ratio: float
    expires_at: float = float("-inf")

    def __post_init__(self) -> None:
        if not 0.0 < self.margin_ratio < 0.5:
            raise ValueError("margin_ratio must be between 0 and 0.5")

    def renewed(self, sent_at: float, ttl_s: float) -> None:
        """Record that a keepalive sent at ``sent_at`` was answered with ``ttl_s``.

        The deadline never moves back: answers may arrive out of order after a
        reconnect, and an older one says less.
        """
        if ttl_s <= 0:
            return
        self.expires_at = max(self.expires_at, sent_at + ttl_s * (1.0 - self.margin_ratio))

    def expire(self) -> None:
        """Forget the deadline: the lease is known to be gone."""
        self.expires_at = float("-inf")

    def remaining(self, now: float) -> float:
        """Return the seconds left at ``now`` (negative once past)."""
        return self.expires_at - now

    def valid(self, now: float) -> bool:
        """Return whether the holder may still act at ``now``."""
        return now < self.expires_at
