"""The worker pool: claims tasks, runs their handlers, reports how they ended.

It is made of small parts, each one ledger or one loop, composed by :class:`WorkerPool`::

    ┌─────────┐ dispatch ┌────────┐ outcome ┌───────┐
    │ Claimer │─────────▶│ Runner │────────▶│ Acker │
    └────┬────┘          └───┬────┘         └───┬───┘
         │ room?             │ start, finish    │ release once acked
         ▼                   ▼                  ▼
    ┌────────────────────────────────────────────────┐
    │ HeldTasks: each task held, from claim to ack   │
    └────────────────────────────────────────────────┘
                         ▲ holding, started; take away
                  ┌─────────────┐
                  │ Heartbeater │ every lease/3
                  └─────────────┘

The Claimer, the Heartbeater and the Acker call the queue through a
:class:`~northpole.tasks.backends.WorkerBackend` (in-process or HTTP).

* The **Claimer** keeps at most ``concurrency + prefetch`` tasks queued or
  running, claiming in batches with a long poll.
* The **Runner** runs at most ``concurrency`` handlers at once: async ones as
  asyncio tasks, sync ones in a thread pool of the same size.
* The **Acker** reports outcomes in batches and retries them while the queue
  is unreachable.
* The **Heartbeater** reports started and held tasks, which extends their
  leases, and takes away the tasks the queue names in ``cancel``: their
  ``cancelled`` event is set and their outcome is never reported.

:meth:`WorkerPool.stop` drains: no new claims (the one in flight is
answered and its tasks run), in-flight and prefetched tasks finish within
``drain_timeout_s``, acks are flushed, then :meth:`WorkerPool.run` returns.
Errors that are not transient (a refused token, for instance) stop the pool
the same way and are raised by ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from northpole.core.errors import ConfigurationError, NorthpoleError, Unavailable
from northpole.core.logging import get_logger
from northpole.core.metrics import new_registry
from northpole.tasks.backends import (
    Ack,
    AckResult,
    Assignment,
    Backoff,
    Completion,
    Failure,
    RemoteError,
    WorkerBackend,
)
from northpole.tasks.handlers import NoHandler, Outcome, TaskContext, TaskRegistry, invoke
from northpole.tasks.store import Claim, Heartbeat

_log = get_logger(__name__)

#: Task processing time buckets in seconds, 1 ms to 10 min.
PROCESSING_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


class PoolLifecycleError(NorthpoleError):
    """A :class:`WorkerPool` used out of order (``run`` twice)."""

    code = "pool_lifecycle"


def default_worker_id() -> str:
    """Return ``<hostname>-<pid>-<random>``: unique per worker process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class WorkerMetrics:
    """The worker side's metrics on one registry."""

    processing: Histogram
    utilization: Gauge
    outcomes: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> WorkerMetrics:
        """Create the metrics on ``registry``."""
        return cls(
            processing=Histogram(
                "worker_handler_duration_seconds",
                "Time a handler ran, by task type (this worker; the server's "
                "task_processing_duration_seconds covers every worker).",
                ["task_type"],
                buckets=PROCESSING_BUCKETS,
                registry=registry,
            ),
            utilization=Gauge(
                "worker_busy_ratio",
                "Handlers running divided by the pool's concurrency (this worker; the "
                "server's worker_utilization is reported from heartbeats).",
                ["worker_id"],
                registry=registry,
            ),
            outcomes=Counter(
                "worker_tasks",
                "Attempts a worker finished, by task type and outcome "
                "(completed, failed, cancelled, refused).",
                ["task_type", "outcome"],
                registry=registry,
            ),
        )


# -- the ledger ----------------------------------------------------------------------------


class Phase(StrEnum):
    """Where a held task is in the worker."""

    QUEUED = "queued"  # claimed, waiting for a slot
    RUNNING = "running"  # its handler runs
    ACKING = "acking"  # its outcome waits to be reported


@dataclass(slots=True, eq=False)
class Held:
    """One task the worker holds."""

    assignment: Assignment
    context: TaskContext
    phase: Phase = Phase.QUEUED
    start_reported: bool = False
    taken_away: bool = False


class HeldTasks:
    """Every task the worker holds, from its claim until its ack lands or it is taken away."""

    def __init__(self) -> None:
        self._held: dict[int, Held] = {}
        self._changed = asyncio.Event()

    def add(self, assignment: Assignment) -> Held:
        """Start holding a freshly claimed task."""
        context = TaskContext(
            task_id=assignment.task_id,
            gift_id=assignment.gift_id,
            task_type=assignment.task_type,
            metadata=dict(assignment.metadata or {}),
            attempt=assignment.attempt,
            max_retries=assignment.max_retries,
            idempotency_key=assignment.idempotency_key,
            deadline_ms=assignment.deadline_ms,
        )
        held = Held(assignment, context)
        self._held[assignment.task_id] = held
        self.notify()
        return held

    def move(self, held: Held, phase: Phase) -> None:
        """Move a task to ``phase``."""
        held.phase = phase
        self.notify()

    def get(self, task_id: int, fence: int) -> Held | None:
        """Return the held assignment of ``task_id`` under ``fence``, if any.

        Every lookup names the fence: a task may come back to this worker under a
        new fence while news about its old assignment is still arriving.
        """
        held = self._held.get(task_id)
        return held if held is not None and held.assignment.fence == fence else None

    def release(self, task_id: int, fence: int) -> Held | None:
        """Stop holding an assignment (its ack landed, or it was taken away)."""
        held = self.get(task_id, fence)
        if held is not None:
            del self._held[task_id]
            self.notify()
        return held

    def take_away(self, task_id: int, fence: int) -> Held | None:
        """Mark an assignment taken away by the queue and set its ``cancelled`` event.

        A queued or acking task is released at once; a running one when its handler returns.
        """
        held = self.get(task_id, fence)
        if held is None:
            return None
        held.taken_away = True
        held.context.cancel()
        if held.phase is not Phase.RUNNING:
            self.release(task_id, fence)
        return held

    def count(self, *phases: Phase) -> int:
        """Return how many tasks are in any of ``phases``."""
        return sum(1 for held in self._held.values() if held.phase in phases)

    @property
    def active(self) -> int:
        """Tasks queued or running (what counts against the claim limit)."""
        return self.count(Phase.QUEUED, Phase.RUNNING)

    def holding(self) -> tuple[tuple[int, int], ...]:
        """``(task_id, fence)`` of every held task."""
        return tuple((h.assignment.task_id, h.assignment.fence) for h in self._held.values())

    def unreported_starts(self) -> tuple[tuple[int, int], ...]:
        """``(task_id, fence)`` of held tasks whose handler began and the queue was not told."""
        return tuple(
            (h.assignment.task_id, h.assignment.fence)
            for h in self._held.values()
            if h.phase is not Phase.QUEUED and not h.start_reported
        )

    def mark_reported(self, started: Iterable[tuple[int, int]]) -> None:
        """Remember that the queue was told these ``(task_id, fence)`` started."""
        for task_id, fence in started:
            if (held := self.get(task_id, fence)) is not None:
                held.start_reported = True

    def __len__(self) -> int:
        return len(self._held)

    async def changed(self) -> None:
        """Wait for the next change of any task."""
        await self._changed.wait()

    def notify(self) -> None:
        """Wake everything waiting in :meth:`changed`."""
        self._changed.set()
        self._changed = asyncio.Event()


# -- the parts -----------------------------------------------------------------------------


class Acker:
    """Reports outcomes in batches: flushes ~``flush_s`` after the first waits, or when full.

    Args:
        backend: Where acks go.
        worker_id: Whose acks they are.
        on_result: Called with each ack and how the queue took it.
        flush_s: The most an outcome waits for company.
        max_batch: The most acks in one call.
        backoff: Waits between tries while the queue is unreachable.
    """

    def __init__(
        self,
        backend: WorkerBackend,
        worker_id: str,
        *,
        on_result: Callable[[Ack, AckResult], None],
        flush_s: float = 0.01,
        max_batch: int = 100,
        backoff: Backoff | None = None,
    ) -> None:
        self._backend = backend
        self._worker_id = worker_id
        self._on_result = on_result
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._backoff = backoff or Backoff()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._pending: dict[tuple[int, int], Ack] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False

    def submit(self, ack: Ack) -> None:
        """Queue one ack."""
        self._pending[ack.task_id, ack.fence] = ack
        self._wake.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()

    def discard(self, task_id: int, fence: int) -> None:
        """Drop a queued ack (its task was taken away)."""
        self._pending.pop((task_id, fence), None)

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Flush what is queued without waiting for company, then let :meth:`run` return."""
        self._closing = True
        self._wake.set()
        self._full.set()

    async def run(self) -> None:
        """Send batches until closed and empty; transient errors are retried with backoff."""
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = list(self._pending.values())[: self._max_batch]
            try:
                await self._send(batch)
            except Unavailable as exc:
                failures += 1
                delay = self._backoff.delay_s(failures, self._rng)
                _log.warning("acks not delivered; retrying", error=str(exc), count=len(batch))
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _gather(self) -> None:
        if self._closing or len(self._pending) >= self._max_batch:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._flush_s):
                await self._full.wait()

    async def _send(self, batch: list[Ack]) -> None:
        completed = [a for a in batch if isinstance(a, Completion)]
        failed = [a for a in batch if isinstance(a, Failure)]
        try:
            results = await self._backend.ack(self._worker_id, completed, failed)
        except RemoteError as exc:
            if exc.status_code in (401, 403):
                raise
            # The queue refused the batch itself: its tasks come back after their leases.
            _log.error("acks refused", code=exc.code, error=exc.message, count=len(batch))
            results = [AckResult(a.task_id, ok=False, error_code=exc.code) for a in batch]
        by_id = {result.task_id: result for result in results}
        for ack in batch:
            if self._pending.get((ack.task_id, ack.fence)) is ack:
                del self._pending[ack.task_id, ack.fence]
            result = by_id.get(ack.task_id) or AckResult(ack.task_id, False, None, "no_result")
            self._on_result(ack, result)


class Runner:
    """Runs handlers, at most ``concurrency`` at once, and hands their outcomes on.

    Args:
        registry: The handlers.
        held: The ledger.
        report: Called with the outcome of every attempt not taken away.
        metrics: Where durations and utilization go.
        concurrency: Handlers at once (also the thread pool's size).
        worker_id: The utilization gauge's label.
    """

    def __init__(
        self,
        registry: TaskRegistry,
        held: HeldTasks,
        *,
        report: Callable[[Held, Outcome], None],
        metrics: WorkerMetrics,
        concurrency: int,
        worker_id: str,
    ) -> None:
        self._registry = registry
        self._held = held
        self._report = report
        self._metrics = metrics
        self._concurrency = concurrency
        self._gauge = metrics.utilization.labels(worker_id)
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="northpole-task")
        self._tasks: dict[asyncio.Task[None], Held] = {}

    def dispatch(self, assignment: Assignment) -> None:
        """Hold a claimed task and schedule its handler for the next free slot."""
        held = self._held.add(assignment)
        task = asyncio.create_task(self._run(held), name=f"task-{assignment.task_id}")
        self._tasks[task] = held
        task.add_done_callback(lambda done: self._tasks.pop(done, None))

    async def abandon(self) -> None:
        """Take away every queued or running task: cancel it and report nothing."""
        running = dict(self._tasks)
        for task, held in running.items():
            self._held.take_away(held.assignment.task_id, held.assignment.fence)
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for held in running.values():
            self._held.release(held.assignment.task_id, held.assignment.fence)

    def shutdown(self) -> None:
        """Stop the thread pool; sync handlers still running finish in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._gauge.set(0)

    async def _run(self, held: Held) -> None:
        a = held.assignment
        async with self._slots:
            if held.taken_away:
                return
            self._held.move(held, Phase.RUNNING)
            self._utilization()
            try:
                outcome = await self._execute(held)
            finally:
                self._utilization(finished=True)
        if held.taken_away:
            self._held.release(a.task_id, a.fence)
            self._metrics.outcomes.labels(a.task_type, "cancelled").inc()
            return
        self._held.move(held, Phase.ACKING)
        self._report(held, outcome)

    async def _execute(self, held: Held) -> Outcome:
        a = held.assignment
        with structlog.contextvars.bound_contextvars(
            task_id=str(a.task_id), gift_id=str(a.gift_id), task_type=a.task_type, attempt=a.attempt
        ):
            started = time.perf_counter()
            try:
                outcome = await invoke(
                    self._registry.get(a.task_type), held.context, self._executor
                )
            except NoHandler as exc:
                outcome = Outcome(error=exc.message, retry=False)
            elapsed = time.perf_counter() - started
            self._metrics.processing.labels(a.task_type).observe(elapsed)
            fields: dict[str, object] = {"duration_ms": round(elapsed * 1000, 3)}
            if held.taken_away:
                fields["taken_away"] = True
            if outcome.ok:
                _log.info("task finished", **fields)
            else:
                _log.warning("task failed", error=outcome.error, retry=outcome.retry, **fields)
        return outcome

    def _utilization(self, *, finished: bool = False) -> None:
        running = self._held.count(Phase.RUNNING) - (1 if finished else 0)
        self._gauge.set(max(running, 0) / self._concurrency)


class Heartbeater:
    """Tells the queue the worker lives, which tasks started and which it holds.

    Args:
        backend: Where heartbeats go.
        held: The ledger.
        template: The worker's identity and lease (``started``/``holding`` filled per beat).
        interval_s: Seconds between beats.
        take_away: Called with ``(task_id, fence)`` of each held task the queue says the
            worker no longer holds (the answer names ids; the fence is the one sent).
    """

    def __init__(
        self,
        backend: WorkerBackend,
        held: HeldTasks,
        *,
        template: Heartbeat,
        interval_s: float,
        take_away: Callable[[int, int], None],
    ) -> None:
        self._backend = backend
        self._held = held
        self._template = template
        self._interval_s = interval_s
        self._take_away = take_away
        #: The partitions the worker owned at the last answer.
        self.partitions: tuple[int, ...] = ()

    async def beat(self) -> None:
        """Send one heartbeat and act on the answer."""
        started = self._held.unreported_starts()
        holding = self._held.holding()
        answer = await self._backend.heartbeat(
            replace(self._template, started=started, holding=holding)
        )
        self._held.mark_reported(started)
        if answer.partitions != self.partitions:
            _log.info("partitions changed", partitions=list(answer.partitions))
            self.partitions = answer.partitions
        sent = dict(holding)
        for task_id in answer.cancel:
            if task_id in sent:  # about the assignment we sent, not a newer one
                self._take_away(task_id, sent[task_id])

    async def beat_first(self) -> None:
        """Send the first beat (which makes the worker known); tolerate an unreachable queue."""
        try:
            await self.beat()
        except Unavailable as exc:
            _log.warning("queue unreachable at start; will keep trying", error=str(exc))

    async def run(self) -> None:
        """Beat every ``interval_s``; an unreachable queue is logged and tried next time."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.beat()
            except Unavailable as exc:
                _log.warning("heartbeat failed", error=str(exc))


class Claimer:
    """Claims tasks while there is room, and hands them to ``dispatch``.

    Args:
        backend: Where tasks come from.
        held: The ledger (its ``active`` count is checked against ``capacity``).
        dispatch: Called with each claimed task.
        template: The claim (``limit`` set per call).
        capacity: The most tasks queued or running at once (concurrency + prefetch).
        batch: The most tasks one claim asks for.
        wait_s: Long-poll wait of each claim.
        idle_s: Pause after an empty answer (in case the queue does not long-poll).
        backoff: Waits between tries while the queue is unreachable.
    """

    def __init__(
        self,
        backend: WorkerBackend,
        held: HeldTasks,
        *,
        dispatch: Callable[[Assignment], None],
        template: Claim,
        capacity: int,
        batch: int,
        wait_s: float,
        idle_s: float,
        backoff: Backoff,
    ) -> None:
        self._backend = backend
        self._held = held
        self._dispatch = dispatch
        self._template = template
        self._capacity = capacity
        self._batch = batch
        self._wait_s = wait_s
        self._idle_s = idle_s
        self._backoff = backoff
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._stopped = False
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Claim no more: :meth:`run` returns once the claim in flight (if any) has answered.

        The claim in flight is not cut short, because the queue would still hand
        over what it finds to a worker no longer listening, and those tasks
        would wait out their leases; its tasks are dispatched and drained.
        """
        self._stopped = True
        self._wake.set()
        self._held.notify()

    async def run(self) -> None:
        """Claim until stopped; an unreachable queue is retried with backoff."""
        failures = 0
        while not self._stopped:
            room = self._capacity - self._held.active
            if room <= 0:
                await self._held.changed()
                continue
            claim = replace(self._template, limit=min(self._batch, room))
            try:
                reply = await self._backend.claim(claim, wait_s=self._wait_s)
            except Unavailable as exc:
                failures += 1
                delay = self._backoff.delay_s(failures, self._rng)
                _log.warning("claim failed; retrying", error=str(exc), in_s=round(delay, 3))
                await self._pause(delay)
                continue
            failures = 0
            for assignment in reply.tasks:
                self._dispatch(assignment)
            if not reply.tasks:
                await self._pause(self._idle_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()


# -- the pool ------------------------------------------------------------------------------


class WorkerPool:
    """Runs the handlers of ``registry`` on tasks claimed from ``backend``.

    Args:
        registry: The handlers; the pool claims their task types (or ``task_types``).
        backend: The queue (the caller opens and closes it).
        group: The consumer group (workers of a group share the partitions).
        concurrency: Handlers running at once.
        worker_id: Unique per process (default ``<hostname>-<pid>-<random>``).
        task_types: The types to claim (default: every type of ``registry``).
        batch: The most tasks one claim asks for (default ``concurrency``).
        prefetch: Tasks claimed beyond ``concurrency`` so a free slot need not
            wait for a claim (default ``concurrency // 10``, at least 1).
        lease_s: Lease asked for at each claim and heartbeat.
        heartbeat_s: Seconds between heartbeats (default ``lease_s / 3``).
        poll_wait_s: Long-poll wait of each claim.
        idle_s: Pause after an empty claim.
        drain_timeout_s: How long :meth:`stop` lets in-flight tasks finish.
        ack_flush_s: The most an outcome waits to be batched with others.
        ack_batch: The most outcomes in one ack call.
        backoff: Waits between tries while the queue is unreachable.
        metrics_registry: Where the pool's metrics go (default: a fresh registry).
    """

    def __init__(
        self,
        registry: TaskRegistry,
        backend: WorkerBackend,
        *,
        group: str,
        concurrency: int,
        worker_id: str | None = None,
        task_types: Collection[str] | None = None,
        batch: int | None = None,
        prefetch: int | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        poll_wait_s: float = 5.0,
        idle_s: float = 0.05,
        drain_timeout_s: float = 30.0,
        ack_flush_s: float = 0.01,
        ack_batch: int = 100,
        backoff: Backoff | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        types = frozenset(registry.types if task_types is None else task_types)
        interval_s = heartbeat_s if heartbeat_s is not None else lease_s / 3
        _check(concurrency=concurrency, lease_s=lease_s, heartbeat_s=interval_s)
        _check_types(types, registry)
        self.worker_id = worker_id or default_worker_id()
        self.group = group
        self.concurrency = concurrency
        self.task_types = types
        self.drain_timeout_s = drain_timeout_s
        self.metrics = WorkerMetrics.register(metrics_registry or new_registry())
        backoff = backoff or Backoff(base_s=0.2, max_s=5.0)
        lease_ms = max(1, round(lease_s * 1000))
        self._backend = backend
        self._held = HeldTasks()
        self._acker = Acker(
            backend,
            self.worker_id,
            on_result=self._acked,
            flush_s=ack_flush_s,
            max_batch=ack_batch,
            backoff=backoff,
        )
        self._runner = Runner(
            registry,
            self._held,
            report=self._finished,
            metrics=self.metrics,
            concurrency=concurrency,
            worker_id=self.worker_id,
        )
        self._heartbeater = Heartbeater(
            backend,
            self._held,
            template=Heartbeat(self.worker_id, group, types, concurrency, lease_ms=lease_ms),
            interval_s=interval_s,
            take_away=self._take_away,
        )
        self._claimer = Claimer(
            backend,
            self._held,
            dispatch=self._runner.dispatch,
            template=Claim(self.worker_id, group, types, lease_ms=lease_ms),
            capacity=concurrency + (max(1, concurrency // 10) if prefetch is None else prefetch),
            batch=batch or concurrency,
            wait_s=poll_wait_s,
            idle_s=idle_s,
            backoff=backoff,
        )
        self._stopping = asyncio.Event()
        self._aborted = False
        self._drain_deadline = float("inf")
        self._fatal: BaseException | None = None
        self._ran = False

    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions the queue says this worker owns (as of the last heartbeat)."""
        return self._heartbeater.partitions

    @property
    def held(self) -> int:
        """Tasks held right now: queued, running or waiting for their ack."""
        return len(self._held)

    def stop(self) -> None:
        """Ask :meth:`run` to drain and return; safe to call more than once, from signals too."""
        self._stopping.set()

    def abort(self) -> None:
        """Stop without waiting for in-flight tasks (their leases run out; they come back)."""
        self._aborted = True
        self._drain_deadline = 0.0
        self.stop()
        self._held.notify()

    async def run(self) -> None:
        """Claim and run tasks until :meth:`stop`, then drain.

        Raises:
            PoolLifecycleError: ``run`` was called before.
            NorthpoleError: A non-transient error from the queue (after draining).
        """
        if self._ran:
            raise PoolLifecycleError("WorkerPool.run() may be called only once")
        self._ran = True
        with structlog.contextvars.bound_contextvars(worker_id=self.worker_id):
            await self._heartbeater.beat_first()
            loops = {
                "heartbeat": asyncio.create_task(self._guard(self._heartbeater.run)),
                "ack": asyncio.create_task(self._guard(self._acker.run)),
                "claim": asyncio.create_task(self._guard(self._claimer.run)),
            }
            _log.info("worker started", group=self.group, concurrency=self.concurrency)
            try:
                await self._stopping.wait()
                await self._drain(loops)
            finally:
                for loop in loops.values():
                    loop.cancel()
                await asyncio.gather(*loops.values(), return_exceptions=True)
                self._runner.shutdown()
            _log.info("worker stopped", held=len(self._held))
        if self._fatal is not None:
            raise self._fatal

    async def _drain(self, loops: dict[str, asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        if not self._aborted:
            self._drain_deadline = loop.time() + self.drain_timeout_s
        _log.info("draining", in_flight=self._held.active, timeout_s=self.drain_timeout_s)
        claiming = loops["claim"]
        claiming.add_done_callback(lambda _: self._held.notify())
        self._claimer.stop()
        if not await self._wait_until(claiming.done):
            claiming.cancel()  # what it would have claimed comes back after its lease
        await asyncio.gather(claiming, return_exceptions=True)
        if not await self._wait_until(lambda: self._held.active == 0):
            _log.warning("drain timed out; abandoning tasks", in_flight=self._held.active)
            await self._runner.abandon()
        self._acker.close()
        flush_s = max(self._drain_deadline - loop.time(), 1.0)
        try:
            async with asyncio.timeout(flush_s):
                await asyncio.shield(loops["ack"])
        except TimeoutError:
            _log.warning("acks not flushed before the deadline", pending=len(self._acker))

    async def _wait_until(self, done: Callable[[], bool]) -> bool:
        """Wait until ``done()`` (re-checked at every ledger change) or the drain deadline."""
        loop = asyncio.get_running_loop()
        while not done():
            remaining = self._drain_deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._held.changed()
        return True

    async def _guard(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run one loop; an error it cannot handle stops the pool and is raised by ``run``."""
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.error("worker loop failed; stopping", error=f"{type(exc).__name__}: {exc}")
            if self._fatal is None:
                self._fatal = exc
            self.stop()

    # -- callbacks between the parts --------------------------------------------------

    def _finished(self, held: Held, outcome: Outcome) -> None:
        a = held.assignment
        if outcome.ok:
            self._acker.submit(Completion(a.task_id, a.fence, outcome.result))
        else:
            error = outcome.error or "failed"
            delay = outcome.retry_delay_s
            self._acker.submit(Failure(a.task_id, a.fence, error, outcome.retry, delay))

    def _acked(self, ack: Ack, result: AckResult) -> None:
        held = self._held.release(ack.task_id, ack.fence)
        if held is None:  # taken away while its ack was on the wire
            return
        task_type = held.assignment.task_type
        if result.ok:
            outcome = "completed" if isinstance(ack, Completion) else "failed"
        else:
            outcome = "refused"
            _log.warning(
                "ack refused; result dropped",
                task_id=str(ack.task_id),
                code=result.error_code,
                error=result.message,
            )
        self.metrics.outcomes.labels(task_type, outcome).inc()

    def _take_away(self, task_id: int, fence: int) -> None:
        held = self._held.take_away(task_id, fence)
        if held is None:
            return
        self._acker.discard(task_id, fence)
        _log.info("task taken away by the queue", task_id=str(task_id), phase=held.phase.value)


def _check(*, concurrency: int, lease_s: float, heartbeat_s: float) -> None:
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", field="concurrency")
    if lease_s <= 0:
        raise ConfigurationError("lease_s must be positive", field="lease_s")
    if not 0 < heartbeat_s < lease_s:
        raise ConfigurationError(
            "heartbeat_s must be positive and below lease_s", field="heartbeat_s"
        )


def _check_types(types: frozenset[str], registry: TaskRegistry) -> None:
    if not types:
        raise ConfigurationError("no task types to claim: register a handler", field="task_types")
    missing = sorted(types - registry.types)
    if missing:
        raise ConfigurationError(
            f"no handler for task type(s) {', '.join(missing)}", field="task_types"
        )
