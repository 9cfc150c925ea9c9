"""Workshop ids leased from etcd: the cluster edition's ``WorkshopIdAllocator``.

Each generator takes the *lowest free* workshop id of its region (0-1023)::

    txn  if create_revision({root}/idgen/{region}/workshops/{id}) == 0
         then put that key = {"instance": ..., "pid": ..., "acquired_at": ...} on our lease

The key lives exactly as long as the generator's lease, so a generator that
dies frees its id within one TTL. The generator itself stops issuing IDs at the
lease's local deadline (see :mod:`northpole.coord.deadline`), which comes
before etcd can expire the lease and hand the id to someone else: two live
generators never issue with one workshop id, even across a partition, an etcd
leader change, or a pause (``SIGSTOP``) longer than the TTL.

When all 1,024 ids of a region are held, :meth:`EtcdWorkshopAllocator.acquire`
raises :class:`~northpole.core.errors.WorkshopIdUnavailable` (HTTP 503).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable

import orjson

from northpole.coord import keys
from northpole.coord.client import Compare, EtcdClient, Put
from northpole.coord.leases import LeaseKeeper
from northpole.coord.metrics import CoordMetrics
from northpole.coord.settings import CoordSettings
from northpole.core.errors import Unavailable, WorkshopIdUnavailable
from northpole.core.logging import get_logger
from northpole.idgen.allocator import WorkshopLease
from northpole.idgen.snowflake import MAX_WORKSHOP_ID

_log = get_logger(__name__)

#: Workshop ids a region can hold at once (10 bits).
WORKSHOP_IDS = MAX_WORKSHOP_ID + 1
#: Create-if-absent attempts per read of the taken ids (others may race for the same ids).
TRIES_PER_ROUND = 8
#: Reads of the taken ids before giving up under contention.
MAX_ROUNDS = 16


def free_ids(taken: Iterable[int], limit: int = WORKSHOP_IDS) -> list[int]:
    """Return the ids in ``0..limit-1`` that are not ``taken``, lowest first."""
    held = set(taken)
    return [workshop_id for workshop_id in range(limit) if workshop_id not in held]


def parse_workshop_id(prefix: bytes, key: bytes) -> int | None:
    """Return the workshop id of a key under ``prefix``, or ``None`` for a foreign key."""
    if not key.startswith(prefix):
        return None
    tail = key[len(prefix) :]
    if not tail.isdigit():
        return None
    value = int(tail)
    return value if value < WORKSHOP_IDS else None


class EtcdWorkshopLease:
    """A workshop id held through an etcd lease."""

    def __init__(self, workshop_id: int, keeper: LeaseKeeper) -> None:
        self._workshop_id = workshop_id
        self.keeper = keeper
        self.released = False

    @property
    def workshop_id(self) -> int:
        """The id this lease grants."""
        return self._workshop_id

    @property
    def source(self) -> str:
        """Always ``etcd``."""
        return "etcd"

    def check(self) -> None:
        """Raise :class:`WorkshopIdUnavailable` once the lease's local deadline has passed."""
        self.keeper.check()

    async def lost(self) -> str:
        """Wait until the lease is lost (or released); return why."""
        return await self.keeper.wait_lost()


class EtcdWorkshopAllocator:
    """Lease the lowest free workshop id of a region from etcd.

    Args:
        settings: The ``coord`` settings (endpoints, TTL, margin, prefix, region).
        metrics: Where lease metrics go, if anywhere.
        holder: What to record as the holder (default ``<host>-<pid>``).
    """

    def __init__(
        self,
        settings: CoordSettings,
        *,
        metrics: CoordMetrics | None = None,
        holder: str | None = None,
    ) -> None:
        if settings.endpoints is None:
            raise WorkshopIdUnavailable("no etcd endpoints are configured")
        self.settings = settings
        self.prefix = keys.workshops_prefix(settings.prefix, settings.region)
        self.holder = holder or settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._metrics = metrics
        self._client: EtcdClient | None = None
        self._held = 0

    async def acquire(self) -> EtcdWorkshopLease:
        """Take the lowest free workshop id on a new lease.

        Raises:
            WorkshopIdUnavailable: All 1,024 ids are held, contention did not
                settle, or etcd cannot be reached.
        """
        client = await self._open()
        keeper = LeaseKeeper(
            client,
            self.settings.lease_ttl_s,
            margin_ratio=self.settings.safety_margin_ratio,
            purpose="workshop",
            metrics=self._metrics,
            error=WorkshopIdUnavailable,
        )
        try:
            await keeper.start()
            workshop_id = await self._claim(client, keeper.lease_id)
        except WorkshopIdUnavailable:
            await self._abandon(keeper)
            raise
        except Unavailable as exc:
            await self._abandon(keeper)
            raise WorkshopIdUnavailable(
                f"no workshop id: {exc.message}", retry_after_s=exc.retry_after_s
            ) from exc
        except BaseException:
            await self._abandon(keeper)
            raise
        _log.info("workshop id leased", workshop_id=workshop_id, lease_id=keeper.lease_id)
        return EtcdWorkshopLease(workshop_id, keeper)

    async def release(self, lease: WorkshopLease) -> None:
        """Revoke the lease, freeing the id at once."""
        if isinstance(lease, EtcdWorkshopLease) and not lease.released:
            lease.released = True
            await lease.keeper.close(revoke=True)
            await self._closed_one()

    async def taken(self) -> list[int]:
        """Return the workshop ids held now, ascending."""
        client = await self._open()
        try:
            return await self._taken(client)
        finally:
            await self._closed_one()

    async def _taken(self, client: EtcdClient) -> list[int]:
        found = await client.get_prefix(self.prefix, keys_only=True)
        ids = (parse_workshop_id(self.prefix, kv.key) for kv in found.kvs)
        return sorted(i for i in ids if i is not None)

    async def _claim(self, client: EtcdClient, lease_id: int) -> int:
        value = orjson.dumps(
            {"holder": self.holder, "pid": os.getpid(), "acquired_at": time.time()}
        )
        for _ in range(MAX_ROUNDS):
            candidates = free_ids(await self._taken(client))
            if not candidates:
                raise WorkshopIdUnavailable(
                    f"all {WORKSHOP_IDS} workshop ids of region {self.settings.region!r} are "
                    "held by live generators; stop one, or run more in another region "
                    "(see docs/coordination.md)"
                )
            for workshop_id in candidates[:TRIES_PER_ROUND]:
                key = keys.workshop_key(self.settings.prefix, self.settings.region, workshop_id)
                result = await client.txn([Compare.absent(key)], [Put(key, value, lease_id)])
                if result.succeeded:
                    return workshop_id
        raise WorkshopIdUnavailable("could not take a workshop id: too many generators racing")

    async def _abandon(self, keeper: LeaseKeeper) -> None:
        await keeper.close(revoke=keeper.lease_id != 0)
        await self._closed_one()

    async def _open(self) -> EtcdClient:
        if self._client is None:
            endpoints = self.settings.endpoints or []
            self._client = await EtcdClient(
                endpoints, timeout_s=self.settings.request_timeout_s
            ).open()
        self._held += 1
        return self._client

    async def _closed_one(self) -> None:
        self._held -= 1
        if self._held <= 0 and self._client is not None:
            client, self._client = self._client, None
            self._held = 0
            await client.close()
