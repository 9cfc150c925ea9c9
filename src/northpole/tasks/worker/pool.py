"""The pool: composes the ledger, the Claimer, the Runner, the Acker and the Heartbeater.

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
import secrets
import socket
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from northpole.core.errors import ConfigurationError, NorthpoleError
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger
from northpole.core.metrics import new_registry
from northpole.tasks.backends import (
    Ack,
    AckResult,
    Backoff,
    Completion,
    Failure,
    WorkerBackend,
)
from northpole.tasks.handlers import Outcome, TaskRegistry
from northpole.tasks.model import MAX_HELD
from northpole.tasks.store import Claim, Heartbeat
from northpole.tasks.worker.acker import Acker
from northpole.tasks.worker.claimer import Claimer
from northpole.tasks.worker.heartbeat import Heartbeater
from northpole.tasks.worker.ledger import Held, HeldTasks
from northpole.tasks.worker.metrics import WorkerMetrics
from northpole.tasks.worker.runner import Runner

_log = get_logger(__name__)


class PoolLifecycleError(NorthpoleError):
    """A :class:`WorkerPool` used out of order (``run`` twice)."""

    code = "pool_lifecycle"


def default_worker_id() -> str:
    """Return ``<hostname>-<pid>-<random>``: unique per worker process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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
        ack_batch: int = 1000,
        backoff: Backoff | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        types = frozenset(registry.types if task_types is None else task_types)
        interval_s = heartbeat_s if heartbeat_s is not None else lease_s / 3
        capacity = concurrency + (max(1, concurrency // 10) if prefetch is None else prefetch)
        _check(concurrency=concurrency, capacity=capacity, lease_s=lease_s, heartbeat_s=interval_s)
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
            capacity=capacity,
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
                await stop_tasks(*loops.values())
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
        await self._wait_until(claiming.done)
        await stop_tasks(claiming)  # what it would have claimed comes back after its lease
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
        self.metrics.outcome(task_type, outcome).inc()

    def _take_away(self, task_id: int, fence: int) -> None:
        held = self._held.take_away(task_id, fence)
        if held is None:
            return
        self._acker.discard(task_id, fence)
        _log.info("task taken away by the queue", task_id=str(task_id), phase=held.phase.value)


def _check(*, concurrency: int, capacity: int, lease_s: float, heartbeat_s: float) -> None:
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", field="concurrency")
    if capacity > MAX_HELD:
        raise ConfigurationError(
            f"concurrency + prefetch must be at most {MAX_HELD:,}", field="concurrency"
        )
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
