"""A lease kept alive in the background, with the local deadline its holder obeys.

:class:`LeaseKeeper` grants a lease, refreshes it every third of its TTL over
one keepalive stream (one request in flight, so every answer is matched to the
moment its request was sent), and tracks the :class:`LeaseDeadline`. The lease
counts as *lost* once etcd answers that it is gone, or once the local deadline
passes without a fresh answer: after that :meth:`LeaseKeeper.check` always
raises, and :meth:`LeaseKeeper.wait_lost` returns. A lost keeper is not
revived: its owner grants a new lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from northpole.coord.client import EtcdClient
from northpole.coord.deadline import LeaseDeadline
from northpole.coord.metrics import CoordMetrics
from northpole.core.errors import NotFound, Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger

_log = get_logger(__name__)

#: How many times per TTL the lease is refreshed.
REFRESHES_PER_TTL = 3
#: The shortest pause between keepalive attempts after a failure.
MIN_RETRY_S = 0.05


class LeaseKeeper:
    """Hold one etcd lease for as long as etcd and the local deadline allow.

    Args:
        client: An open etcd client.
        ttl_s: The TTL to ask for (etcd may grant more).
        margin_ratio: The share of the TTL given up for safety (see :mod:`.deadline`).
        purpose: A label for logs and metrics (``workshop``, ``discovery``, ``election``).
        metrics: Where to count failures and losses, if anywhere.
        error: The error :meth:`check` raises (a subclass of ``Unavailable``).
        monotonic: The clock (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        client: EtcdClient,
        ttl_s: int,
        *,
        margin_ratio: float,
        purpose: str,
        metrics: CoordMetrics | None = None,
        error: type[Unavailable] = Unavailable,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.purpose = purpose
        self.lease_id = 0
        self.granted_ttl_s = 0
        self._deadline = LeaseDeadline(margin_ratio)
        self._metrics = metrics
        self._error = error
        self._now = monotonic
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> LeaseKeeper:
        """Grant the lease and start refreshing it.

        Raises:
            Unavailable: etcd cannot be reached.
        """
        sent = self._now()
        self.lease_id, self.granted_ttl_s = await self.client.grant(self.ttl_s)
        self._deadline.renewed(sent, self.granted_ttl_s)
        self._task = asyncio.create_task(self._keep(), name=f"lease-{self.purpose}")
        return self

    @property
    def lost(self) -> bool:
        """Whether the lease was lost (for good)."""
        return self._lost.is_set()

    def remaining(self) -> float:
        """Return the seconds until the local deadline (0 once lost)."""
        if self.lost:
            return 0.0
        return max(0.0, self._deadline.remaining(self._now()))

    def valid(self) -> bool:
        """Return whether the holder may act now."""
        return not self.lost and self._deadline.valid(self._now())

    def check(self) -> None:
        """Raise the configured error unless the holder may act now."""
        if self.lost:
            raise self._error(f"the {self.purpose} lease was lost: {self._lost_reason}")
        if not self._deadline.valid(self._now()):
            raise self._error(f"the {self.purpose} lease passed its local deadline")

    async def wait_lost(self) -> str:
        """Wait until the lease is lost; return why."""
        await self._lost.wait()
        return self._lost_reason

    async def close(self, *, revoke: bool = True) -> None:
        """Stop refreshing and (by default) revoke the lease, deleting its keys.

        Revoking is best-effort: if etcd cannot be reached the lease expires by itself.
        """
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks(task)
        if not self.lost:
            self._mark_lost("closed")
        if revoke and self.lease_id:
            try:
                await self.client.revoke(self.lease_id)
            except Unavailable as exc:
                _log.warning("lease revoke failed", purpose=self.purpose, error=exc.message)

    def _mark_lost(self, reason: str) -> None:
        self._deadline.expire()
        self._lost_reason = reason
        self._lost.set()
        if self._metrics is not None and reason != "closed":
            self._metrics.leases_lost.labels(self.purpose).inc()
            self._metrics.lease_remaining.labels(self.purpose).set(0)

    async def _keep(self) -> None:
        stream = self.client.keepalive()
        interval = self.granted_ttl_s / REFRESHES_PER_TTL
        pause = interval
        try:
            while True:
                await asyncio.sleep(pause)
                pause = interval
                sent = self._now()
                left = self._deadline.remaining(sent)
                if left <= 0:
                    self._lose("its local deadline passed before a keepalive was answered")
                    return
                try:
                    ttl = await stream.ping(
                        self.lease_id, timeout_s=min(self.client.timeout_s, left)
                    )
                except NotFound:
                    ttl = 0
                except Unavailable as exc:
                    self._failed(exc)
                    pause = max(
                        MIN_RETRY_S, min(interval, self._deadline.remaining(self._now())) / 4
                    )
                    continue
                if ttl <= 0:
                    self._lose("etcd says the lease expired")
                    return
                self._deadline.renewed(sent, ttl)
                if self._metrics is not None:
                    self._metrics.lease_remaining.labels(self.purpose).set(self.remaining())
        finally:
            stream.close()

    def _failed(self, exc: Unavailable) -> None:
        if self._metrics is not None:
            self._metrics.keepalive_failures.labels(self.purpose).inc()
        _log.warning("lease keepalive failed", purpose=self.purpose, error=exc.message)

    def _lose(self, reason: str) -> None:
        _log.warning("lease lost", purpose=self.purpose, lease_id=self.lease_id, reason=reason)
        self._mark_lost(reason)
