"""Service discovery on etcd: instances register with a lease, check their health, resolve.

Every service instance keeps one key on a lease::

    {root}/services/{service}/{instance_id} ->
        {"address": ..., "started_at": ..., "health": "healthy" | "unhealthy",
         "detail": ..., "checked_at": ..., "version": ...}

:class:`ServiceRegistrar` writes the key at start, runs the instance's health
check every ``health_interval_s`` (5 s, the design's figure) and rewrites the
record with the result: an unhealthy instance stays listed but is marked so.
A dead instance stops refreshing its lease and its key leaves within one lease
TTL; a clean stop revokes the lease and the key leaves at once.

:class:`ServiceResolver` lists instances by one range read, cached for
``resolver_cache_s``, and gives the addresses of the healthy ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import orjson

from northpole.coord import keys
from northpole.coord.client import EtcdClient, KeyValue
from northpole.coord.leases import LeaseKeeper
from northpole.coord.metrics import CoordMetrics
from northpole.coord.settings import CoordSettings
from northpole.core.app import Readiness
from northpole.core.errors import NotFound, Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger

_log = get_logger(__name__)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

#: A health check: the part's readiness, computed without I/O.
HealthCheck = Callable[[], Readiness]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What an instance publishes about itself (the JSON value of its key)."""

    address: str
    started_at: float
    health: str
    checked_at: float
    version: str
    detail: str = "ok"

    def encode(self) -> bytes:
        """Return the JSON value stored in etcd."""
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, value: bytes) -> InstanceRecord | None:
        """Parse a stored value; ``None`` if it is not a record (written by something else)."""
        try:
            data = orjson.loads(value)
            return cls(
                address=str(data["address"]),
                started_at=float(data["started_at"]),
                health=str(data["health"]),
                checked_at=float(data["checked_at"]),
                version=str(data["version"]),
                detail=str(data.get("detail", "")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance of a service."""

    service: str
    instance_id: str
    record: InstanceRecord

    @property
    def healthy(self) -> bool:
        """Whether its last health check passed."""
        return self.record.health == HEALTHY

    def age_s(self, now: float) -> float:
        """Seconds since the instance started, at wall-clock ``now``."""
        return max(0.0, now - self.record.started_at)


def instances_from(root: str, kvs: list[KeyValue]) -> list[Instance]:
    """Turn the keys under the services prefix into instances, skipping foreign keys."""
    found = []
    for kv in kvs:
        names = keys.split_instance_key(root, kv.key)
        record = InstanceRecord.decode(kv.value) if names else None
        if names and record:
            found.append(Instance(names[0], names[1], record))
    return found


def checked(check: HealthCheck) -> Readiness:
    """Run a health check; an exception counts as unhealthy, never as a crash."""
    try:
        return check()
    except Exception as exc:  # a broken check must mark the instance, not kill the loop
        return Readiness(False, f"health check failed: {exc!r}")


class ServiceRegistrar:
    """Register this process's services in etcd and keep their health current.

    Args:
        client: An open etcd client.
        settings: The ``coord`` settings (prefix, TTL, margin, health interval).
        services: Service name to health check, all registered on one lease.
        instance_id: This process's id in the registry.
        address: Where other services reach this process.
        version: The software version to publish.
        metrics: Where lease and health-check metrics go, if anywhere.
        wall: The wall clock for ``started_at`` and ``checked_at``.
    """

    def __init__(
        self,
        client: EtcdClient,
        settings: CoordSettings,
        *,
        services: Mapping[str, HealthCheck],
        instance_id: str,
        address: str,
        version: str,
        metrics: CoordMetrics | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.services = {keys.check_segment(n, field="service"): c for n, c in services.items()}
        self.instance_id = keys.check_segment(instance_id, field="instance_id")
        self.address = address
        self.version = version
        self.metrics = metrics
        self._wall = wall
        self.started_at = wall()
        self.keeper: LeaseKeeper | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> ServiceRegistrar:
        """Register every service and start the health loop.

        Raises:
            Unavailable: etcd cannot be reached.
        """
        await self._register()
        self._task = asyncio.create_task(self._loop(), name="discovery")
        return self

    async def stop(self) -> None:
        """Stop checking and deregister at once (the lease is revoked)."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks(task)
        if self.keeper is not None:
            await self.keeper.close(revoke=True)

    def registered(self) -> bool:
        """Whether the registrations are live (the lease holds)."""
        return self.keeper is not None and self.keeper.valid()

    async def _register(self) -> None:
        keeper = LeaseKeeper(
            self.client,
            self.settings.lease_ttl_s,
            margin_ratio=self.settings.safety_margin_ratio,
            purpose="discovery",
            metrics=self.metrics,
        )
        await keeper.start()
        self.keeper = keeper
        try:
            await self.publish()
        except Unavailable:
            await keeper.close(revoke=True)
            raise

    async def publish(self) -> None:
        """Run every health check now and write the results."""
        keeper = self.keeper
        if keeper is None:
            raise Unavailable("not registered")
        for service, check in self.services.items():
            readiness = checked(check)
            health = HEALTHY if readiness.ready else UNHEALTHY
            if self.metrics is not None:
                self.metrics.health_checks.labels(service, health).inc()
            record = InstanceRecord(
                address=self.address,
                started_at=self.started_at,
                health=health,
                checked_at=self._wall(),
                version=self.version,
                detail=readiness.detail,
            )
            key = keys.instance_key(self.settings.prefix, service, self.instance_id)
            await self.client.put(key, record.encode(), lease=keeper.lease_id)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                if self.keeper is None or self.keeper.lost:
                    _log.warning("discovery lease lost; registering again")
                    await self._register()
                else:
                    await self.publish()
            except NotFound:  # etcd no longer knows the lease: register anew next tick
                if self.keeper is not None:
                    await self.keeper.close(revoke=False)
            except Unavailable as exc:
                _log.warning("discovery update failed", error=exc.message)


class ServiceResolver:
    """Find instances of services, from a short-lived cache of one range read.

    Args:
        client: An open etcd client.
        root: The key root (``coord.prefix``).
        cache_s: How long one read is reused (0: read every time).
        monotonic: The clock of the cache.
    """

    def __init__(
        self,
        client: EtcdClient,
        *,
        root: str = keys.DEFAULT_ROOT,
        cache_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.root = root
        self.cache_s = cache_s
        self._now = monotonic
        self._cache: dict[str | None, tuple[float, list[Instance]]] = {}

    async def instances(self, service: str | None = None) -> list[Instance]:
        """Return the registered instances of ``service`` (all services when ``None``).

        Raises:
            Unavailable: etcd cannot be reached.
        """
        hit = self._cache.get(service)
        if hit is not None and self._now() - hit[0] < self.cache_s:
            return hit[1]
        prefix = (
            keys.services_prefix(self.root)
            if service is None
            else keys.service_prefix(self.root, keys.check_segment(service, field="service"))
        )
        found = instances_from(self.root, (await self.client.get_prefix(prefix)).kvs)
        self._cache[service] = (self._now(), found)
        return found

    async def healthy(self, service: str) -> list[str]:
        """Return the addresses of the healthy instances of ``service``."""
        return [i.record.address for i in await self.instances(service) if i.healthy]
