"""The Runner: runs at most ``concurrency`` handlers at once.

Async handlers run as asyncio tasks, sync ones in a thread pool of the same size.
Everything done per task is kept cheap (a worker runs tens of thousands a second):
the utilization gauge is computed when scraped, metric children are looked up once
per task type, and the "task finished" line is only built when INFO is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from northpole.core.logging import get_logger
from northpole.tasks.backends import Assignment
from northpole.tasks.handlers import NoHandler, Outcome, TaskRegistry, invoke
from northpole.tasks.worker.ledger import Held, HeldTasks, Phase
from northpole.tasks.worker.metrics import WorkerMetrics

_log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # where our lines end up, and whose level counts


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
        self._gauge.set_function(lambda: self._held.running / self._concurrency)
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="northpole-task")
        self._tasks: dict[asyncio.Task[None], Held] = {}

    def dispatch(self, assignment: Assignment) -> None:
        """Hold a claimed task and schedule its handler for the next free slot."""
        held = self._held.add(assignment)
        task = asyncio.create_task(self._run(held))
        self._tasks[task] = held
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

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
        self._gauge.set_function(lambda: 0.0)

    async def _run(self, held: Held) -> None:
        a = held.assignment
        async with self._slots:
            if held.taken_away:
                return
            self._held.move(held, Phase.RUNNING)
            outcome = await self._execute(held)
        if held.taken_away:
            self._held.release(a.task_id, a.fence)
            self._metrics.outcome(a.task_type, "cancelled").inc()
            return
        self._held.move(held, Phase.ACKING)
        self._report(held, outcome)

    async def _execute(self, held: Held) -> Outcome:
        a = held.assignment
        # Each task runs in an asyncio task of its own, with a copy of the context: what
        # is bound here is gone when it ends, so nothing needs unbinding.
        structlog.contextvars.bind_contextvars(
            task_id=str(a.task_id), gift_id=str(a.gift_id), task_type=a.task_type, attempt=a.attempt
        )
        started = time.perf_counter()
        try:
            outcome = await invoke(self._registry.get(a.task_type), held.context, self._executor)
        except NoHandler as exc:
            outcome = Outcome(error=exc.message, retry=False)
        elapsed = time.perf_counter() - started
        self._metrics.processing_of(a.task_type).observe(elapsed)
        if outcome.ok and not _stdlib_log.isEnabledFor(logging.INFO):
            return outcome
        fields: dict[str, object] = {"duration_ms": round(elapsed * 1000, 3)}
        if held.taken_away:
            fields["taken_away"] = True
        if outcome.ok:
            _log.info("task finished", **fields)
        else:
            _log.warning("task failed", error=outcome.error, retry=outcome.retry, **fields)
        return outcome
