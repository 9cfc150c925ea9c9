"""The gift registry part: registers gifts, follows their tasks, relays their events.

While the app runs, the service

* answers the API (:mod:`northpole.registry.api`) through the repository, with
  the LRU cache (:mod:`northpole.registry.cache`) in front of lookups by id;
* reads ``task.state_changed`` events from the in-process bus and turns them,
  in batches, into status changes (:mod:`northpole.registry.lifecycle`); a
  batch the database could not take (Unavailable) is retried with backoff, so
  an event read is not lost to a database hiccup;
* runs an :class:`~northpole.bus.outbox.OutboxRelay` from the repository's
  outbox to the :class:`~northpole.bus.stream.EventStream` it was given (a
  MemoryStream in the embedded edition, NATS JetStream in the cluster one);
* on PostgreSQL, keeps partitions created ahead and archives old ones every
  ``upkeep_interval_s`` (:mod:`northpole.registry.partitions`).

:func:`build_registry_service` builds it from settings: SQLite in the data
directory when ``database_url`` is unset, PostgreSQL otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from northpole.bus.outbox import OutboxRelay
from northpole.bus.port import EventBus, Subscription
from northpole.bus.stream import EventStream
from northpole.bus.subjects import TASK_STATE_CHANGED
from northpole.core.app import Readiness
from northpole.core.clock import Clock
from northpole.core.errors import InvalidInput, NorthpoleError, Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger
from northpole.registry.cache import GiftCache
from northpole.registry.lifecycle import TaskSignal, is_relevant
from northpole.registry.metrics import RegistryMetrics
from northpole.registry.model import (
    Gift,
    GiftPage,
    GiftPatch,
    GiftQuery,
    GiftStatus,
    NewGift,
    StatusChange,
    new_gift,
)
from northpole.registry.repository import GiftRepository
from northpole.registry.settings import RegistrySettings

_log = get_logger(__name__)

#: Returns ``n`` fresh, unique Gift IDs.
IdSource = Callable[[int], list[int]]
#: Opens the repository; called once at start-up.
RepositoryOpener = Callable[[], Awaitable[GiftRepository]]

REGISTRY_DB = "registry.db"
ARCHIVE_DIR = "archive"
#: Events the task-event subscription holds before dropping the oldest.
SUBSCRIPTION_CAPACITY = 200_000
_GAUGES_EVERY_S = 5.0


@runtime_checkable
class Partitioned(Protocol):
    """A repository with partitions to keep up (PostgreSQL)."""

    async def upkeep(
        self, now_ms: int, *, ahead: int, retention_months: int
    ) -> tuple[Sequence[object], Sequence[object]]:
        """Create partitions ahead and archive old ones."""
        ...


def signal_of(event: object) -> TaskSignal | None:
    """Read a task event (a ``TaskEvent`` of the task queue) as a signal; ``None`` if not one."""
    try:
        return TaskSignal(
            gift_id=int(getattr(event, "gift_id")),  # noqa: B009 - duck-typed event
            task_id=int(getattr(event, "task_id")),  # noqa: B009
            task_type=str(getattr(event, "task_type")),  # noqa: B009
            task_state=str(getattr(event, "new_state")),  # noqa: B009
            at_ms=int(getattr(event, "at_ms")),  # noqa: B009
        )
    except (AttributeError, TypeError, ValueError):
        return None


class RegistryService:
    """The gift registry part.

    Args:
        settings: The ``registry`` settings group.
        open_repository: Opens the repository at start-up (closed at shutdown).
        registry: Where metrics go.
        clock: The clock (partition upkeep's "now").
        bus: Where task events come from.
        stream: Where the outbox relay publishes.
        ids: Where Gift IDs come from.
        epoch_ms: The epoch those ids are issued against.
    """

    name = "registry"

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        open_repository: RepositoryOpener,
        registry: CollectorRegistry,
        clock: Clock,
        bus: EventBus,
        stream: EventStream,
        ids: IdSource,
        epoch_ms: int,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.bus = bus
        self.stream = stream
        self.epoch_ms = epoch_ms
        self.metrics = RegistryMetrics.register(registry)
        self.cache = GiftCache(settings.cache_size, ttl_s=settings.cache_ttl_s)
        self._open_repository = open_repository
        self._ids = ids
        self._repository: GiftRepository | None = None
        self._relay: OutboxRelay | None = None
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    # -- lifecycle --------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the repository; follow task events, relay the outbox and keep partitions."""
        repository = await self._open_repository()
        subscription = self.bus.subscribe(TASK_STATE_CHANGED, capacity=SUBSCRIPTION_CAPACITY)
        relay = OutboxRelay(repository.outbox, self.stream, batch=self.settings.outbox_batch)
        unwatch = self.metrics.watch_relay(lambda: relay.relayed)
        self._repository, self._relay = repository, relay
        jobs = [
            asyncio.create_task(self._follow_forever(subscription), name="registry-follower"),
            asyncio.create_task(relay.run(), name="registry-outbox-relay"),
            asyncio.create_task(self._gauges_forever(repository), name="registry-gauges"),
        ]
        if isinstance(repository, Partitioned):
            jobs.append(
                asyncio.create_task(self._upkeep_forever(repository), name="registry-upkeep")
            )
        try:
            yield
        finally:
            subscription.close()
            await stop_tasks(*jobs)
            await self._follow_rest(subscription)
            unwatch()
            self._repository = self._relay = None
            await repository.close()

    def router(self) -> APIRouter:
        """Return the HTTP routes of this part."""
        from northpole.registry.api import build_router

        return build_router(self)

    def readiness(self) -> Readiness:
        """Ready while the repository is open."""
        if self._repository is None:
            return Readiness(False, "repository closed")
        return Readiness(True)

    @property
    def repository(self) -> GiftRepository:
        """The open repository; raises Unavailable outside the lifespan."""
        if self._repository is None:
            raise Unavailable("the gift registry is not running")
        return self._repository

    # -- the API's operations ------------------------------------------------

    async def create(self, requests: Sequence[NewGift]) -> list[Gift]:
        """Register gifts under new ids, all or none; return them.

        Raises:
            InvalidInput: None, or more than ``max_batch``.
        """
        if not requests:
            raise InvalidInput("a request needs at least one gift", field="gifts")
        if len(requests) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} gifts per request", field="gifts"
            )
        repository = self.repository
        ids = self._ids(len(requests))
        gifts = [new_gift(i, r, epoch_ms=self.epoch_ms) for i, r in zip(ids, requests, strict=True)]
        started = time.perf_counter()
        await repository.create(gifts)
        self.metrics.write_duration.labels("create").observe(time.perf_counter() - started)
        self.metrics.created.inc(len(gifts))
        self._wake_relay()
        return gifts

    async def get(self, gift_id: int) -> Gift:
        """One gift, from the cache if there (GiftNotFound if none)."""
        cached = self.cache.get(gift_id)
        if cached is not None:
            self.metrics.cache_lookups.labels("hit").inc()
            return cached
        self.metrics.cache_lookups.labels("miss").inc()
        stamp = self.cache.stamp()
        gift = await self.repository.get(gift_id)
        self.cache.put(gift, stamp)
        return gift

    async def find(self, query: GiftQuery) -> GiftPage:
        """One page of a listing."""
        return await self.repository.find(query)

    async def patch(self, gift_id: int, patch: GiftPatch) -> Gift:
        """Change an operator's fields of one gift.

        Raises:
            InvalidInput: The patch names no field.
            GiftNotFound: No such gift.
        """
        if patch.empty:
            raise InvalidInput("name at least one of gift_type, recipient_id", field="body")
        started = time.perf_counter()
        try:
            gift = await self.repository.patch(gift_id, patch)
        finally:
            self.cache.invalidate([gift_id])
        self.metrics.write_duration.labels("patch").observe(time.perf_counter() - started)
        return gift

    async def counts(self) -> dict[GiftStatus, int]:
        """How many gifts are in each status."""
        return await self.repository.count_by_status()

    async def follow(self, signals: Sequence[TaskSignal]) -> list[StatusChange]:
        """Apply task signals to their gifts now (the follower's step); return the changes."""
        relevant = [s for s in signals if is_relevant(s, self.settings.task_types)]
        self.metrics.task_events.labels("ignored").inc(len(signals) - len(relevant))
        if not relevant:
            return []
        started = time.perf_counter()
        try:
            changes = await self.repository.follow(relevant, self.settings.task_types)
        finally:
            self.cache.invalidate({s.gift_id for s in relevant})
        self.metrics.write_duration.labels("follow").observe(time.perf_counter() - started)
        self.metrics.task_events.labels("followed").inc(len(relevant))
        for change in changes:
            self.metrics.status_changes.labels(change.new.value).inc()
        if changes:
            self._wake_relay()
        return changes

    # -- background jobs ---------------------------------------------------------

    def _wake_relay(self) -> None:
        if self._relay is not None:
            self._relay.wake()

    async def _next_batch(self, subscription: Subscription) -> list[TaskSignal]:
        _, first = await subscription.get()
        events = [first]
        for _ in range(min(subscription.pending(), self.settings.follow_batch - 1)):
            events.append((await subscription.get())[1])
        signals = [s for s in map(signal_of, events) if s is not None]
        self.metrics.task_events.labels("ignored").inc(len(events) - len(signals))
        return signals

    async def _follow_forever(self, subscription: Subscription) -> None:
        dropped = 0
        while True:
            signals = await self._next_batch(subscription)
            if subscription.dropped > dropped:
                self.metrics.task_events.labels("dropped").inc(subscription.dropped - dropped)
                _log.warning("task events dropped", dropped=subscription.dropped - dropped)
                dropped = subscription.dropped
            await self._follow_with_retries(signals)

    async def _follow_with_retries(self, signals: Sequence[TaskSignal]) -> None:
        """Apply one batch; retry while the database is unavailable, give up on other errors."""
        failures = 0
        while True:
            try:
                await self.follow(signals)
                return
            except Unavailable as exc:
                failures += 1
                delay = min(5.0, 0.05 * 2**failures) * self._rng.uniform(0.5, 1.0)
                _log.warning("gift status update failed; retrying", error=exc.message)
                await asyncio.sleep(delay)
            except NorthpoleError as exc:  # retrying cannot help: count and go on
                self.metrics.task_events.labels("dropped").inc(len(signals))
                _log.error("gift status update refused", error=exc.message, events=len(signals))
                return

    async def _follow_rest(self, subscription: Subscription) -> None:
        """At shutdown: apply the events already read from the bus (best effort)."""
        signals: list[TaskSignal] = []
        while subscription.pending():
            _, event = await subscription.get()
            signal = signal_of(event)
            if signal is not None:
                signals.append(signal)
        if signals:
            try:
                await self.follow(signals)
            except NorthpoleError as exc:
                _log.warning(
                    "gift status updates lost at shutdown", count=len(signals), error=exc.message
                )

    async def _gauges_forever(self, repository: GiftRepository) -> None:
        size = getattr(repository.outbox, "size", None)
        while True:
            self.metrics.cache_size.set(len(self.cache))
            if size is not None:
                with contextlib.suppress(NorthpoleError):
                    self.metrics.outbox_pending.set(await size())
            await asyncio.sleep(_GAUGES_EVERY_S)

    async def _upkeep_forever(self, repository: Partitioned) -> None:
        while True:
            try:
                _, archived = await repository.upkeep(
                    self.clock.now_ms(),
                    ahead=self.settings.partitions_ahead,
                    retention_months=self.settings.retention_months,
                )
                self.metrics.partitions_archived.inc(len(archived))
            except NorthpoleError as exc:
                _log.warning("partition upkeep failed", error=exc.message)
            await asyncio.sleep(self.settings.upkeep_interval_s)


def archive_dir_of(settings: RegistrySettings, data_dir: Path) -> Path:
    """Where archives go: ``archive_dir``, else ``<data_dir>/archive``."""
    return settings.archive_dir or data_dir / ARCHIVE_DIR


def repository_opener(
    settings: RegistrySettings, *, data_dir: Path, epoch_ms: int
) -> RepositoryOpener:
    """Opens the repository the settings name: PostgreSQL by URL, else SQLite in ``data_dir``."""

    async def open_repository() -> GiftRepository:
        if settings.database_url is not None:
            from northpole.registry.postgres_repository import PostgresGiftRepository

            return await PostgresGiftRepository(
                settings.database_url,
                epoch_ms=epoch_ms,
                pool_size=settings.pool_size,
                archive_dir=archive_dir_of(settings, data_dir),
            ).open()
        from northpole.registry.sqlite_repository import SqliteGiftRepository

        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return await SqliteGiftRepository(
            data_dir / REGISTRY_DB, busy_timeout_ms=settings.busy_timeout_ms
        ).open()

    return open_repository


def build_registry_service(
    settings: RegistrySettings,
    *,
    data_dir: Path,
    epoch_ms: int,
    registry: CollectorRegistry,
    clock: Clock,
    bus: EventBus,
    stream: EventStream,
    ids: IdSource,
) -> RegistryService:
    """Build the registry part from its settings (see the module docstring)."""
    return RegistryService(
        settings,
        open_repository=repository_opener(settings, data_dir=data_dir, epoch_ms=epoch_ms),
        registry=registry,
        clock=clock,
        bus=bus,
        stream=stream,
        ids=ids,
        epoch_ms=epoch_ms,
    )
