"""The task queue service: builds Task records, applies them through the store, publishes events.

It owns what the store does not: task ids (from the Gift ID generator),
resolving batch-local ``ref`` names, deadline checks against the clock, long
polling for claims, the periodic sweeper, metrics and the autoscaling signal.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from northpole.bus.port import EventBus
from northpole.core.clock import Clock
from northpole.core.errors import InvalidInput, NorthpoleError, Unavailable
from northpole.core.lifecycle import cancel_requested, check_cancelled, stop_tasks
from northpole.core.logging import get_logger
from northpole.core.readiness import Readiness
from northpole.core.settings import TaskSettings
from northpole.tasks.metrics import TaskMetrics
from northpole.tasks.model import Reason, Task, TaskEvent, TaskSpec, TaskState
from northpole.tasks.scheduler import desired_workers, partition_of
from northpole.tasks.store import (
    Claim,
    CompleteRequest,
    Heartbeat,
    HeartbeatAnswer,
    QueueStats,
    TaskStore,
    WorkerInfo,
)
from northpole.tasks.subjects import TASK_STATE_CHANGED

if TYPE_CHECKING:
    from fastapi import APIRouter

_log = get_logger(__name__)

#: Returns ``n`` fresh, unique task ids (Gift IDs).
IdSource = Callable[[int], list[int]]
#: Opens the task store; called once at start-up.
StoreOpener = Callable[[], Awaitable[TaskStore]]

_STATS_EVERY_MS = 1_000


@dataclass(frozen=True, slots=True)
class SubmitItem:
    """One task of a submit request, before it has an id.

    Attributes:
        spec: What to run; its ``dependencies`` are left empty here.
        dependencies: Task ids (decimal) or ``ref`` names of tasks in the same batch.
        ref: A name other tasks of the same batch may depend on.
    """

    spec: TaskSpec
    dependencies: tuple[str, ...] = ()
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One consumer group in the queues report."""

    group: str
    workers: int
    task_types: tuple[str, ...]
    depth: int
    avg_processing_s: float
    desired_workers: int


@dataclass(frozen=True, slots=True)
class QueuesReport:
    """What ``GET /api/v1/queues`` shows."""

    stats: QueueStats
    now_ms: int
    partitions: int
    groups: list[GroupReport] = field(default_factory=list)


class TaskService:
    """The task queue part.

    Args:
        settings: The ``tasks`` settings group.
        open_store: Opens the store at start-up (closed at shutdown).
        registry: Where server-side metrics go.
        clock: The clock.
        bus: Where state changes are published (subject ``task.state_changed``).
        ids: Where task ids come from; without it the service cannot accept submits.
    """

    name = "tasks"

    def __init__(
        self,
        settings: TaskSettings,
        *,
        open_store: StoreOpener,
        registry: CollectorRegistry,
        clock: Clock,
        bus: EventBus,
        ids: IdSource | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.bus = bus
        self.metrics = TaskMetrics.register(registry)
        self._open_store = open_store
        self._ids = ids
        self._store: TaskStore | None = None
        self._changed = asyncio.Event()
        self._partitions_of: dict[str, tuple[int, ...]] = {}
        self._last_stats_ms = 0

    # -- lifecycle --------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the store and run the sweeper while the app runs."""
        self._store = await self._open_store()
        sweeper = asyncio.create_task(self._sweep_forever(), name="tasks-sweeper")
        try:
            yield
        finally:
            await stop_tasks(sweeper)
            store, self._store = self._store, None
            await store.close()

    def router(self) -> APIRouter:
        """Return the HTTP routes of this part."""
        from northpole.tasks.api import build_router

        return build_router(self)

    def readiness(self) -> Readiness:
        """Ready while the store is open."""
        return Readiness(True) if self._store is not None else Readiness(False, "store closed")

    @property
    def store(self) -> TaskStore:
        """The open store; raises Unavailable outside the lifespan."""
        if self._store is None:
            raise Unavailable("the task queue is not running")
        return self._store

    # -- submitting and managing ---------------------------------------------

    async def submit(self, items: Sequence[SubmitItem]) -> list[Task]:
        """Give ids to ``items`` and store them all, or none.

        Raises:
            InvalidInput: A deadline in the past, an unknown ref, a duplicate ref,
                or (from the store) an unknown dependency or a cycle.
        """
        if not items:
            raise InvalidInput("a submit needs at least one task", field="tasks")
        if self._ids is None:
            raise Unavailable("this process cannot issue task ids")
        now = self.clock.now_ms()
        ids = self._ids(len(items))
        refs = _refs(items, ids)
        tasks = [
            self._new_task(item, task_id, refs, now)
            for item, task_id in zip(items, ids, strict=True)
        ]
        stored, events = await self.store.submit(tasks, now_ms=now)
        self._publish(events)
        return stored

    def _new_task(self, item: SubmitItem, task_id: int, refs: dict[str, int], now: int) -> Task:
        spec = item.spec
        if spec.deadline_ms is not None and spec.deadline_ms <= now:
            raise InvalidInput("deadline must be in the future", field="deadline")
        return Task(
            id=task_id,
            gift_id=spec.gift_id,
            task_type=spec.task_type,
            priority=spec.priority,
            dependencies=tuple(_resolve(dep, refs) for dep in item.dependencies),
            max_retries=spec.max_retries,
            deadline_ms=spec.deadline_ms,
            metadata=dict(spec.metadata),
            idempotency_key=spec.idempotency_key,
            partition=partition_of(spec.gift_id, self.settings.partitions),
            state=TaskState.PENDING,
            created_ms=now,
            updated_ms=now,
            available_ms=now,
        )

    async def get(self, task_id: int) -> Task:
        """Return a task (TaskNotFound if none)."""
        return await self.store.get(task_id)

    async def cancel(self, task_id: int) -> Task:
        """Cancel a PENDING or running task (it becomes FAILED, reason ``cancelled``)."""
        self._publish(await self.store.cancel(task_id, now_ms=self.clock.now_ms()))
        return await self.store.get(task_id)

    async def redrive(self, task_id: int) -> Task:
        """Put a FAILED task back to PENDING."""
        self._publish(await self.store.redrive(task_id, now_ms=self.clock.now_ms()))
        return await self.store.get(task_id)

    # -- the worker protocol ---------------------------------------------------

    async def claim(
        self,
        claim: Claim,
        *,
        wait_s: float = 0.0,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[list[Task], tuple[int, ...]]:
        """Claim up to ``claim.limit`` tasks, waiting up to ``wait_s`` for some to appear.

        Args:
            claim: Who asks, for what.
            wait_s: Longest wait (capped by ``max_claim_wait_s``) when nothing is claimable.
            gone: Tells whether the asker has hung up; checked before every retry of a
                long poll, so tasks are not assigned to a worker that died waiting.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(max(wait_s, 0.0), self.settings.max_claim_wait_s)
        poll_s = self.settings.sweep_interval_ms / 1000
        # Wake-ups of the partitions the worker owns (all until it knows): tasks elsewhere
        # wake their owners, and are stolen here at the periodic re-check if need be.
        own = self._partitions_of.get(claim.worker_id) or None
        seen = await self.store.wait_for_work(-1, 0.0, own) if wait_s > 0 else 0
        while True:
            waiter = self._changed
            tasks, events = await self.store.claim(claim, now_ms=self.clock.now_ms())
            self._publish(events)
            remaining = give_up - loop.time()
            if tasks or remaining <= 0:
                return tasks, self._partitions_of.get(claim.worker_id, ())
            # Woken by any change here or a wake-up from the store (another process's
            # submit); also re-check now and then for retries whose backoff ended.
            seen = await self._wait_for_work(waiter, seen, min(remaining, poll_s), own)
            if gone is not None and await gone():
                return [], ()

    async def _wait_for_work(
        self,
        changed: asyncio.Event,
        seen: int,
        timeout_s: float,
        partitions: Collection[int] | None,
    ) -> int:
        """Wait for a change in this process or the store's wake-up; return its count."""
        here = asyncio.ensure_future(changed.wait())
        there = asyncio.ensure_future(self.store.wait_for_work(seen, timeout_s, partitions))
        try:
            await asyncio.wait((here, there), timeout=timeout_s, return_when=FIRST_COMPLETED)
        finally:
            here.cancel()
            if not there.done():
                there.cancel()
        if there.done() and not there.cancelled() and there.exception() is None:
            return there.result()
        return seen

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Record a worker's heartbeat (see :meth:`TaskStore.heartbeat`)."""
        answer = await self.store.heartbeat(beat, now_ms=self.clock.now_ms())
        self._partitions_of[beat.worker_id] = answer.partitions
        self._publish(answer.events)
        return answer

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None
    ) -> TaskState:
        """Record success of the holder's attempt; return the new state."""
        events = await self.store.complete(
            task_id, worker_id=worker_id, fence=fence, result=result, now_ms=self.clock.now_ms()
        )
        self._publish(events)
        return events[-1].new_state if events else TaskState.COMPLETED

    async def complete_many(
        self, items: Sequence[CompleteRequest]
    ) -> list[TaskState | NorthpoleError]:
        """Record the success of many attempts at once; per item, the new state or the error
        (a stale fence, an unknown task) that refused it."""
        if not items:
            return []
        outcomes = await self.store.complete_many(items, now_ms=self.clock.now_ms())
        out: list[TaskState | NorthpoleError] = []
        events: list[TaskEvent] = []
        for outcome in outcomes:
            if isinstance(outcome, NorthpoleError):
                out.append(outcome)
            else:
                events += outcome
                out.append(outcome[-1].new_state if outcome else TaskState.COMPLETED)
        self._publish(events)
        return out

    async def fail(
        self,
        task_id: int,
        *,
        worker_id: str,
        fence: int,
        error: str,
        retry: bool = True,
        delay_ms: int | None = None,
    ) -> TaskState:
        """Record a failed attempt of the holder; return the task's new state."""
        events = await self.store.fail(
            task_id,
            worker_id=worker_id,
            fence=fence,
            reason=Reason.HANDLER_ERROR,
            message=error,
            retry=retry,
            delay_ms=delay_ms,
            now_ms=self.clock.now_ms(),
        )
        self._publish(events)
        return next((e.new_state for e in events if e.task_id == task_id), TaskState.FAILED)

    # -- reporting ----------------------------------------------------------

    async def queues(self) -> QueuesReport:
        """Return depths, oldest pending ages and the autoscaling signal per group."""
        now = self.clock.now_ms()
        stats = await self.store.stats(now_ms=now)
        groups = _group_reports(stats, await self.store.workers(now_ms=now), self.settings)
        return QueuesReport(
            stats=stats, now_ms=now, partitions=self.settings.partitions, groups=groups
        )

    # -- internals -----------------------------------------------------------

    def _publish(self, events: Sequence[TaskEvent]) -> None:
        if not events:
            return
        self.metrics.count(events)
        for event in events:
            if event.new_state is TaskState.COMPLETED and event.started_ms is not None:
                self.metrics.processing_of(event.task_type).observe(
                    max(0, event.at_ms - event.started_ms) / 1000
                )
        self.bus.publish(TASK_STATE_CHANGED, events)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _sweep_forever(self) -> None:
        interval = self.settings.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sweep_once()
            except Exception:  # the sweeper must outlive any one bad pass
                if not cancel_requested():
                    _log.exception("task sweep failed")
            check_cancelled()  # a cancel the driver lost (core.lifecycle)

    async def _sweep_once(self) -> None:
        now = self.clock.now_ms()
        self._publish(await self.store.sweep(now_ms=now, worker_ttl_ms=self.settings.worker_ttl_ms))
        if now - self._last_stats_ms >= _STATS_EVERY_MS:
            self._last_stats_ms = now
            await self._refresh_gauges(now)

    async def _refresh_gauges(self, now: int) -> None:
        report = await self.queues()
        depths: dict[tuple[str, str], int] = {}
        for row in report.stats.depths:
            if row.state is TaskState.PENDING:
                key = (row.task_type, str(row.priority))
                depths[key] = depths.get(key, 0) + row.count
        self.metrics.set_depths(depths)
        for group in report.groups:
            self.metrics.desired_workers.labels(group.group).set(group.desired_workers)
        workers = await self.store.workers(now_ms=now)
        live = {w.worker_id for w in workers}
        self._partitions_of = {w: p for w, p in self._partitions_of.items() if w in live}
        self.metrics.set_utilization(
            {w.worker_id: w.holding / max(w.concurrency, 1) for w in workers}
        )


def _refs(items: Sequence[SubmitItem], ids: Sequence[int]) -> dict[str, int]:
    refs: dict[str, int] = {}
    for index, (item, task_id) in enumerate(zip(items, ids, strict=True)):
        if item.ref is None:
            continue
        if item.ref in refs:
            raise InvalidInput(f"ref {item.ref!r} is used twice", field=f"tasks.{index}.ref")
        refs[item.ref] = task_id
    return refs


def _resolve(dependency: str, refs: dict[str, int]) -> int:
    if dependency in refs:
        return refs[dependency]
    if dependency.isascii() and dependency.isdigit() and len(dependency) <= 19:
        return int(dependency)
    raise InvalidInput(
        f"dependency {dependency!r} is neither a task id nor a ref in this batch",
        field="dependencies",
    )


def _group_reports(
    stats: QueueStats, workers: Sequence[WorkerInfo], settings: TaskSettings
) -> list[GroupReport]:
    by_group: dict[str, list[WorkerInfo]] = {}
    for worker in workers:
        by_group.setdefault(worker.group, []).append(worker)
    reports = []
    for group, members in sorted(by_group.items()):
        types = frozenset().union(*(m.task_types for m in members))
        depth = sum(
            row.count
            for row in stats.depths
            if not row.state.is_final and (not types or row.task_type in types)
        )
        times = [t for k, t in stats.recent_processing_s.items() if not types or k in types]
        avg = sum(times) / len(times) if times else 0.0
        concurrency = max(1, sum(m.concurrency for m in members) // len(members))
        reports.append(
            GroupReport(
                group=group,
                workers=len(members),
                task_types=tuple(sorted(types)),
                depth=depth,
                avg_processing_s=avg,
                desired_workers=desired_workers(
                    depth=depth,
                    avg_processing_s=avg,
                    concurrency=concurrency,
                    target_drain_s=settings.target_drain_s,
                    minimum=1,
                ),
            )
        )
    return reports
