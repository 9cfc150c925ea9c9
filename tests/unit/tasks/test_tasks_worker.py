"""Unit tests for northpole.tasks.worker: the pool against an in-memory fake queue."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import structlog
from prometheus_client import CollectorRegistry

from northpole.core.errors import ConfigurationError
from northpole.tasks.backends import (
    AckResult,
    Assignment,
    BackendUnavailable,
    Backoff,
    ClaimReply,
    Completion,
    Failure,
    RemoteError,
)
from northpole.tasks.handlers import Fail, Retry, TaskContext, TaskRegistry
from northpole.tasks.store import Claim, Heartbeat, HeartbeatAnswer
from northpole.tasks.worker import (
    Heartbeater,
    HeldTasks,
    PoolLifecycleError,
    WorkerPool,
    default_worker_id,
)

FAST = Backoff(base_s=0.001, max_s=0.005, attempts=3)


@dataclass
class FakeTask:
    """One task in the fake queue."""

    id: int
    gift_id: int
    task_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    max_retries: int = 3
    state: str = "PENDING"
    fence: int = 0
    attempts: int = 0
    retry_count: int = 0
    worker_id: str | None = None
    lease_until: float = 0.0
    available_at: float = 0.0
    result: str | None = None
    last_error: str | None = None
    acks: int = 0


class FakeBackend:
    """An in-memory queue with the real semantics: leases, fences, retries, long polls.

    ``failures[method]`` makes the next N calls of that method raise BackendUnavailable.
    """

    def __init__(self) -> None:
        self.tasks: dict[int, FakeTask] = {}
        self._ids = itertools.count(1000)
        self._changed = asyncio.Event()
        self.failures: dict[str, int] = {}
        self.fatal: dict[str, Exception] = {}
        self.calls: dict[str, int] = {"claim": 0, "heartbeat": 0, "ack": 0}
        self.claim_limits: list[int] = []
        self.ack_batches: list[tuple[list[Completion], list[Failure]]] = []
        self.heartbeats: list[Heartbeat] = []
        self.closed = False

    # -- test helpers ------------------------------------------------------

    def submit(self, task_type: str = "wrap", **fields: object) -> int:
        """Add a PENDING task and return its id."""
        task_id = next(self._ids)
        self.tasks[task_id] = FakeTask(task_id, gift_id=task_id * 10, task_type=task_type)
        for name, value in fields.items():
            setattr(self.tasks[task_id], name, value)
        self._wake()
        return task_id

    def cancel(self, task_id: int) -> None:
        """Fail a task as an operator's cancel does (its holder loses it)."""
        task = self.tasks[task_id]
        task.state, task.worker_id, task.last_error = "FAILED", None, "cancelled"

    def reclaim(self, task_id: int) -> None:
        """Take a running task back as an expired lease does, without telling the holder."""
        task = self.tasks[task_id]
        task.state, task.worker_id = "PENDING", None

    def states(self) -> dict[int, str]:
        """Return every task's state."""
        return {t.id: t.state for t in self.tasks.values()}

    def acked_ids(self) -> list[int]:
        """Return every task id ever acked, in order."""
        items: list[Completion | Failure] = []
        for done, bad in self.ack_batches:
            items += [*done, *bad]
        return [item.task_id for item in items]

    # -- the port ------------------------------------------------------------

    async def claim(self, claim: Claim, *, wait_s: float) -> ClaimReply:
        """Assign PENDING tasks of the claimed types, long-polling up to ``wait_s``."""
        self._enter("claim")
        self.claim_limits.append(claim.limit)
        give_up = time.monotonic() + wait_s
        while True:
            waiter = self._changed
            picked = self._pick(claim)
            if picked or time.monotonic() >= give_up:
                return ClaimReply(picked, (0, 1))
            try:
                async with asyncio.timeout(give_up - time.monotonic()):
                    await waiter.wait()
            except TimeoutError:
                pass

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Extend the leases of held tasks; name the ones the worker no longer holds."""
        self._enter("heartbeat")
        self.heartbeats.append(beat)
        cancel = []
        for task_id, fence in beat.holding:
            task = self.tasks.get(task_id)
            if task is not None and self._holds(task, beat.worker_id, fence):
                task.lease_until = time.monotonic() + beat.lease_ms / 1000
            else:
                cancel.append(task_id)
        for task_id, fence in beat.started:
            task = self.tasks.get(task_id)
            if task is not None and self._holds(task, beat.worker_id, fence):
                task.state = "IN_PROGRESS"
        return HeartbeatAnswer(cancel=tuple(cancel), partitions=(0, 1))

    async def ack(
        self, worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        """Apply completions and failures whose fence is current."""
        self._enter("ack")
        self.ack_batches.append((list(completed), list(failed)))
        results = []
        items: list[Completion | Failure] = [*completed, *failed]
        for item in items:
            task = self.tasks[item.task_id]
            if not self._holds(task, worker_id, item.fence):
                results.append(AckResult(item.task_id, False, None, "stale_fence", "stale"))
                continue
            task.acks += 1
            task.worker_id = None
            if isinstance(item, Completion):
                task.state, task.result = "COMPLETED", item.result
            elif item.retry and task.retry_count < task.max_retries:
                task.state, task.last_error = "PENDING", item.error
                task.retry_count += 1
                task.available_at = time.monotonic() + (item.retry_delay_s or 0.0)
                self._wake()
            else:
                task.state, task.last_error = "FAILED", item.error
            results.append(AckResult(item.task_id, True, task.state))
        return results

    async def close(self) -> None:
        """Mark closed."""
        self.closed = True

    # -- internals -----------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.fatal:
            raise self.fatal[method]
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise BackendUnavailable(f"{method}: connection refused")

    def _pick(self, claim: Claim) -> list[Assignment]:
        now = time.monotonic()
        picked: list[Assignment] = []
        for task in self.tasks.values():
            if len(picked) >= claim.limit:
                break
            if task.state != "PENDING" or task.available_at > now:
                continue
            if claim.task_types and task.task_type not in claim.task_types:
                continue
            task.state, task.worker_id = "ASSIGNED", claim.worker_id
            task.fence += 1
            task.attempts += 1
            task.lease_until = now + claim.lease_ms / 1000
            picked.append(
                Assignment(
                    task.id,
                    task.gift_id,
                    task.task_type,
                    task.fence,
                    task.attempts,
                    task.max_retries,
                    dict(task.metadata),
                    task.idempotency_key,
                )
            )
        return picked

    @staticmethod
    def _holds(task: FakeTask, worker_id: str, fence: int) -> bool:
        running = task.state in ("ASSIGNED", "IN_PROGRESS")
        return running and task.worker_id == worker_id and task.fence == fence

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def backend() -> FakeBackend:
    """A fresh fake queue."""
    return FakeBackend()


def make_pool(registry: TaskRegistry, backend: FakeBackend, **options: object) -> WorkerPool:
    """Return a pool with fast test timings (overridable)."""
    settings: dict[str, object] = {
        "group": "elves",
        "concurrency": 4,
        "worker_id": "w-1",
        "poll_wait_s": 0.05,
        "idle_s": 0.005,
        "heartbeat_s": 0.05,
        "drain_timeout_s": 2.0,
        "backoff": FAST,
        "metrics_registry": CollectorRegistry(),
    }
    settings.update(options)
    return WorkerPool(registry, backend, **settings)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def run_until(
    pool: WorkerPool, condition: Callable[[], bool], timeout: float = 5.0
) -> asyncio.Task[None]:
    """Start the pool, wait for ``condition``, stop it and wait for ``run`` to return."""
    runner = asyncio.create_task(pool.run())
    try:
        await wait_for(lambda: condition() or runner.done(), timeout)
    finally:
        pool.stop()
        async with asyncio.timeout(timeout):
            await asyncio.gather(runner, return_exceptions=True)
    return runner


def all_final(backend: FakeBackend) -> Callable[[], bool]:
    """Return a predicate: every task COMPLETED or FAILED."""
    return lambda: all(s in ("COMPLETED", "FAILED") for s in backend.states().values())


# -- running handlers ----------------------------------------------------------------------


async def test_async_handler_result_is_acked_as_completed(backend: FakeBackend) -> None:
    """An async handler's return value becomes the COMPLETED task's result."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        return f"wrapped {ctx.gift_id} in {ctx.metadata['paper']}"

    task_id = backend.submit(metadata={"paper": "gold"})
    runner = await run_until(make_pool(tasks, backend), all_final(backend))
    runner.result()
    task = backend.tasks[task_id]
    assert (task.state, task.result) == ("COMPLETED", f"wrapped {task_id * 10} in gold")


async def test_sync_handler_runs_in_a_worker_thread(backend: FakeBackend) -> None:
    """A sync handler runs off the event loop's thread and its result is acked."""
    tasks = TaskRegistry()
    threads: list[int] = []

    @tasks.handler("wrap")
    def wrap(ctx: TaskContext) -> str:
        threads.append(threading.get_ident())
        return "done"

    task_id = backend.submit()
    await run_until(make_pool(tasks, backend), all_final(backend))
    assert backend.tasks[task_id].state == "COMPLETED"
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_never_more_handlers_at_once_than_concurrency(
    backend: FakeBackend, kind: str
) -> None:
    """With concurrency 3 and 15 slow tasks, at most 3 handlers ever run at once."""
    tasks = TaskRegistry()
    lock = threading.Lock()
    running = 0
    peak = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    if kind == "async":

        @tasks.handler("wrap")
        async def wrap_async(ctx: TaskContext) -> None:
            enter()
            await asyncio.sleep(0.02)
            leave()

    else:

        @tasks.handler("wrap")
        def wrap_sync(ctx: TaskContext) -> None:
            enter()
            time.sleep(0.02)
            leave()

    for _ in range(15):
        backend.submit()
    pool = make_pool(tasks, backend, concurrency=3, prefetch=2)
    await run_until(pool, all_final(backend))
    assert set(backend.states().values()) == {"COMPLETED"}
    assert peak == 3
    assert max(backend.claim_limits) <= 5


async def test_only_registered_task_types_are_claimed(backend: FakeBackend) -> None:
    """The pool claims the registry's types only; other tasks stay PENDING."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    mine, other = backend.submit("wrap"), backend.submit("load")
    await run_until(make_pool(tasks, backend), lambda: backend.tasks[mine].state == "COMPLETED")
    assert backend.tasks[other].state == "PENDING"


# -- failures and retries ------------------------------------------------------------------


async def test_handler_exception_is_acked_with_type_and_message(backend: FakeBackend) -> None:
    """A raising handler's attempt fails with "<Type>: <message>" and may be retried."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        raise ValueError("no ribbon left")

    task_id = backend.submit(max_retries=0)
    await run_until(make_pool(tasks, backend), all_final(backend))
    [failure] = [f for _, bad in backend.ack_batches for f in bad]
    assert failure == Failure(task_id, 1, "ValueError: no ribbon left", True, None)
    assert backend.tasks[task_id].state == "FAILED"
    assert backend.tasks[task_id].last_error == "ValueError: no ribbon left"


async def test_retry_delay_is_sent_as_retry_delay_s(backend: FakeBackend) -> None:
    """``raise Retry(delay=2.5, message=...)`` fails the attempt with that delay and message."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    def wrap(ctx: TaskContext) -> None:
        raise Retry(delay=2.5, message="warehouse closed")

    task_id = backend.submit()
    await run_until(make_pool(tasks, backend), lambda: bool(backend.ack_batches))
    [failure] = [f for _, bad in backend.ack_batches for f in bad]
    assert (failure.error, failure.retry, failure.retry_delay_s) == ("warehouse closed", True, 2.5)
    assert backend.tasks[task_id].state == "PENDING"
    assert backend.tasks[task_id].available_at > time.monotonic() + 1


async def test_fail_exception_fails_the_task_without_retry(backend: FakeBackend) -> None:
    """``raise Fail(...)`` reports retry=False, so the task is FAILED with retries left."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        raise Fail("gift is a lump of coal")

    task_id = backend.submit(max_retries=5)
    await run_until(make_pool(tasks, backend), all_final(backend))
    assert backend.tasks[task_id].state == "FAILED"
    assert backend.tasks[task_id].last_error == "gift is a lump of coal"


async def test_retried_task_sees_next_attempt_and_same_idempotency_key(
    backend: FakeBackend,
) -> None:
    """A retried task reaches the handler again with attempt 2 and its idempotency key."""
    tasks = TaskRegistry()
    seen: list[tuple[int, str | None, bool]] = []

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        seen.append((ctx.attempt, ctx.idempotency_key, ctx.is_last_attempt))
        if ctx.attempt == 1:
            raise Retry(delay=0)
        return "ok"

    task_id = backend.submit(idempotency_key="gift-7-wrap", max_retries=1)
    await run_until(make_pool(tasks, backend), all_final(backend))
    assert backend.tasks[task_id].state == "COMPLETED"
    assert seen == [(1, "gift-7-wrap", False), (2, "gift-7-wrap", True)]


async def test_stale_fence_ack_is_dropped_and_counted(backend: FakeBackend) -> None:
    """An ack refused for a stale fence releases the task and counts it as refused."""
    tasks = TaskRegistry()
    release = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        await release.wait()
        return "late"

    task_id = backend.submit()
    registry = CollectorRegistry()
    pool = make_pool(tasks, backend, lease_s=120, heartbeat_s=60, metrics_registry=registry)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: backend.tasks[task_id].state == "ASSIGNED")
    backend.reclaim(task_id)
    backend.tasks[task_id].state = "FAILED"  # so nobody claims it again
    release.set()
    await wait_for(lambda: bool(backend.ack_batches) and pool.held == 0)
    pool.stop()
    await runner
    labels = {"task_type": "wrap", "outcome": "refused"}
    assert registry.get_sample_value("worker_tasks_total", labels) == 1
    assert backend.tasks[task_id].result is None


# -- draining, cancelling ------------------------------------------------------------------


async def test_stop_drains_in_flight_tasks_and_acks_them_before_returning(
    backend: FakeBackend,
) -> None:
    """stop() claims nothing more but lets running handlers finish and flushes their acks."""
    tasks = TaskRegistry()
    started = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "finished while draining"

    first = [backend.submit() for _ in range(2)]
    pool = make_pool(tasks, backend, concurrency=2, prefetch=0)
    runner = asyncio.create_task(pool.run())
    await asyncio.wait_for(started.wait(), 5)
    await wait_for(lambda: all(backend.tasks[t].state != "PENDING" for t in first))
    pool.stop()
    late = backend.submit()
    await asyncio.wait_for(runner, 5)
    assert [backend.tasks[t].state for t in first] == ["COMPLETED", "COMPLETED"]
    assert backend.tasks[late].state == "PENDING"
    assert pool.held == 0


async def test_stop_lets_the_claim_in_flight_answer_and_runs_its_tasks(
    backend: FakeBackend,
) -> None:
    """A task handed over by the long poll open at stop() is run and acked, not stranded."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: "caught at the door")
    pool = make_pool(tasks, backend, poll_wait_s=2.0)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: backend.calls["claim"] >= 1)
    await asyncio.sleep(0.05)  # the claim is now waiting inside the long poll
    pool.stop()
    task_id = backend.submit()
    await asyncio.wait_for(runner, 5)
    assert backend.tasks[task_id].state == "COMPLETED"
    assert backend.calls["claim"] == 1


async def test_abort_cuts_the_claim_in_flight_short(backend: FakeBackend) -> None:
    """abort() does not wait for a long poll to answer."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    pool = make_pool(tasks, backend, poll_wait_s=30.0)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: backend.calls["claim"] >= 1)
    began = time.monotonic()
    pool.abort()
    await asyncio.wait_for(runner, 5)
    assert time.monotonic() - began < 1


async def test_drain_timeout_abandons_stuck_tasks_without_acking(backend: FakeBackend) -> None:
    """A handler still running at the drain deadline is cancelled and its task left unacked."""
    tasks = TaskRegistry()
    contexts: list[TaskContext] = []

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        contexts.append(ctx)
        await asyncio.sleep(3600)

    task_id = backend.submit()
    pool = make_pool(tasks, backend, drain_timeout_s=0.1)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: bool(contexts))
    begun = time.monotonic()
    pool.stop()
    await asyncio.wait_for(runner, 5)
    assert time.monotonic() - begun < 2
    assert contexts[0].cancelled.is_set()
    assert backend.tasks[task_id].state in ("ASSIGNED", "IN_PROGRESS")
    assert backend.ack_batches == []


async def test_abort_skips_the_drain(backend: FakeBackend) -> None:
    """abort() returns at once, without waiting for the drain timeout."""
    tasks = TaskRegistry()
    began = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        began.set()
        await asyncio.sleep(3600)

    backend.submit()
    pool = make_pool(tasks, backend, drain_timeout_s=60)
    runner = asyncio.create_task(pool.run())
    await asyncio.wait_for(began.wait(), 5)
    pool.stop()
    await asyncio.sleep(0.02)
    pool.abort()
    await asyncio.wait_for(runner, 3)


async def test_task_named_in_heartbeat_cancel_is_signalled_and_not_acked(
    backend: FakeBackend,
) -> None:
    """A task the heartbeat answer names gets its cancelled event set and is never acked."""
    tasks = TaskRegistry()
    registry = CollectorRegistry()
    began = asyncio.Event()
    noticed = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        began.set()
        await ctx.cancelled.wait()
        noticed.set()
        return "too late"

    task_id = backend.submit()
    pool = make_pool(tasks, backend, heartbeat_s=0.02, metrics_registry=registry)
    runner = asyncio.create_task(pool.run())
    await asyncio.wait_for(began.wait(), 5)
    backend.cancel(task_id)
    await asyncio.wait_for(noticed.wait(), 5)
    await wait_for(lambda: pool.held == 0)
    pool.stop()
    await runner
    assert task_id not in backend.acked_ids()
    assert backend.tasks[task_id].state == "FAILED"
    labels = {"task_type": "wrap", "outcome": "cancelled"}
    assert registry.get_sample_value("worker_tasks_total", labels) == 1


async def test_sync_handler_sees_is_cancelled(backend: FakeBackend) -> None:
    """A sync handler polling ctx.is_cancelled() notices the queue took its task away."""
    tasks = TaskRegistry()
    began = threading.Event()
    noticed = threading.Event()

    @tasks.handler("wrap")
    def wrap(ctx: TaskContext) -> None:
        began.set()
        deadline = time.monotonic() + 5
        while not ctx.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.005)
        if ctx.is_cancelled():
            noticed.set()

    task_id = backend.submit()
    pool = make_pool(tasks, backend, heartbeat_s=0.02)
    runner = asyncio.create_task(pool.run())
    await wait_for(began.is_set)
    backend.cancel(task_id)
    await wait_for(noticed.is_set)
    await wait_for(lambda: pool.held == 0)
    pool.stop()
    await runner
    assert task_id not in backend.acked_ids()


async def test_heartbeat_reports_started_and_held_tasks(backend: FakeBackend) -> None:
    """Heartbeats list running tasks as started once and as held while they are held."""
    tasks = TaskRegistry()
    release = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        await release.wait()

    task_id = backend.submit()
    pool = make_pool(tasks, backend, heartbeat_s=0.01, concurrency=2)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: backend.tasks[task_id].state == "IN_PROGRESS")
    await wait_for(lambda: len(backend.heartbeats) >= 4)
    release.set()
    await wait_for(all_final(backend))
    pool.stop()
    await runner
    fence = backend.tasks[task_id].fence
    started = [b.started for b in backend.heartbeats if b.started]
    assert started == [((task_id, fence),)]
    assert any((task_id, fence) in b.holding for b in backend.heartbeats)
    first = backend.heartbeats[0]
    assert (first.worker_id, first.group, first.concurrency) == ("w-1", "elves", 2)
    assert first.task_types == frozenset({"wrap"})
    assert pool.partitions == (0, 1)


async def test_cancel_about_an_old_assignment_spares_the_new_one() -> None:
    """A cancel answering a heartbeat that listed fence 1 does not touch the task under fence 2."""
    held = HeldTasks()
    held.add(Assignment(7, 70, "wrap", fence=1, attempt=1))

    class RacingBackend(FakeBackend):
        async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
            # While the beat is on the wire, attempt 1 is acked and the task comes back.
            held.release(7, 1)
            held.add(Assignment(7, 70, "wrap", fence=2, attempt=2))
            return HeartbeatAnswer(cancel=(7,), partitions=())

    taken: list[tuple[int, int]] = []

    def take_away(task_id: int, fence: int) -> None:
        taken.append((task_id, fence))
        held.take_away(task_id, fence)

    beater = Heartbeater(
        RacingBackend(),
        held,
        template=Heartbeat("w-1", "elves"),
        interval_s=1,
        take_away=take_away,
    )
    await beater.beat()
    assert taken == [(7, 1)]
    current = held.get(7, 2)
    assert current is not None and not current.context.is_cancelled()


def test_ledger_ignores_news_about_an_older_fence() -> None:
    """release and take_away with a stale fence leave the current assignment alone."""
    held = HeldTasks()
    held.add(Assignment(7, 70, "wrap", fence=2, attempt=2))
    assert held.release(7, 1) is None
    assert held.take_away(7, 1) is None
    assert held.holding() == ((7, 2),)
    assert held.release(7, 2) is not None and len(held) == 0


async def test_quick_retries_under_frequent_heartbeats_run_each_attempt_once(
    backend: FakeBackend,
) -> None:
    """With a heartbeat every millisecond, every retried task still completes at attempt 2."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            raise Retry(delay=0)
        return "ok"

    ids = [backend.submit() for _ in range(30)]
    pool = make_pool(tasks, backend, heartbeat_s=0.001, concurrency=8)
    await run_until(pool, all_final(backend))
    assert {backend.tasks[t].state for t in ids} == {"COMPLETED"}
    assert {backend.tasks[t].attempts for t in ids} == {2}


# -- the queue's troubles ------------------------------------------------------------------


async def test_unreachable_queue_is_retried_by_every_loop(backend: FakeBackend) -> None:
    """Claims, heartbeats and acks that fail with BackendUnavailable are tried again."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: "ok")
    ids = [backend.submit() for _ in range(5)]
    backend.failures = {"claim": 3, "heartbeat": 2, "ack": 2}
    done = all_final(backend)
    await run_until(make_pool(tasks, backend), lambda: done() and backend.calls["heartbeat"] > 3)
    assert {backend.tasks[t].state for t in ids} == {"COMPLETED"}
    assert backend.calls["claim"] > 3 and backend.calls["ack"] > 2
    assert backend.failures == {"claim": 0, "heartbeat": 0, "ack": 0}


async def test_refused_token_stops_the_pool_and_is_raised(backend: FakeBackend) -> None:
    """A non-transient error (401 on claim) stops the pool; run() raises it."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    backend.fatal["claim"] = RemoteError(401, "unauthenticated", "token expired")
    pool = make_pool(tasks, backend)
    with pytest.raises(RemoteError) as caught:
        await asyncio.wait_for(pool.run(), 5)
    assert caught.value.status_code == 401


async def test_refused_ack_batch_is_dropped_but_a_refused_token_is_fatal(
    backend: FakeBackend,
) -> None:
    """A 422 on an ack batch drops it (leases bring the tasks back); a 401 stops the pool."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: "ok")
    registry = CollectorRegistry()
    backend.fatal["ack"] = RemoteError(422, "invalid_input", "result too long")
    task_id = backend.submit()
    pool = make_pool(tasks, backend, metrics_registry=registry)
    runner = asyncio.create_task(pool.run())
    await wait_for(lambda: backend.calls["ack"] >= 1 and pool.held == 0)
    assert not runner.done()
    labels = {"task_type": "wrap", "outcome": "refused"}
    assert registry.get_sample_value("worker_tasks_total", labels) == 1
    assert backend.tasks[task_id].state == "ASSIGNED"
    backend.fatal["ack"] = RemoteError(401, "unauthenticated", "token expired")
    backend.tasks[task_id].state = "PENDING"
    with pytest.raises(RemoteError, match="token expired"):
        await asyncio.wait_for(runner, 5)


async def test_acks_are_batched(backend: FakeBackend) -> None:
    """Twenty quick tasks are acked in far fewer calls, none above the batch size."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: "ok")
    for _ in range(20):
        backend.submit()
    pool = make_pool(tasks, backend, concurrency=20, ack_batch=8, ack_flush_s=0.05)
    await run_until(pool, all_final(backend))
    sizes = [len(done) + len(bad) for done, bad in backend.ack_batches]
    assert sum(sizes) == 20
    assert len(sizes) < 10
    assert max(sizes) <= 8


async def test_slow_acks_hold_back_claims(backend: FakeBackend) -> None:
    """While acks do not land, the worker stops claiming at twice its capacity.

    Without the bound, a queue slow to take acks makes the worker claim on and
    on (finished tasks no longer count as running) until its heartbeats grow
    past what the queue accepts.
    """
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    for _ in range(200):
        backend.submit()
    gate = asyncio.Event()
    real_ack = backend.ack

    async def stalled_ack(
        worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        await gate.wait()
        return await real_ack(worker_id, completed, failed)

    backend.ack = stalled_ack  # type: ignore[method-assign]
    pool = make_pool(tasks, backend, concurrency=10, prefetch=0, ack_flush_s=0.001)
    runner = asyncio.create_task(pool.run())
    try:
        await wait_for(lambda: pool.held == 20)
        await asyncio.sleep(0.2)  # claims would go on here if nothing held them back
        assigned = [s for s in backend.states().values() if s != "PENDING"]
        assert len(assigned) == 20
        assert pool.held == 20
        gate.set()
        await wait_for(all_final(backend))
    finally:
        gate.set()
        pool.stop()
        await asyncio.wait_for(runner, 5)
    assert backend.acked_ids() and sorted(set(backend.acked_ids())) == sorted(backend.tasks)


# -- observability and configuration -------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_task_and_gift_ids_are_bound_to_the_log_context(
    backend: FakeBackend, kind: str
) -> None:
    """While a handler runs, structlog's context holds its task_id, gift_id and worker_id."""
    tasks = TaskRegistry()
    seen: list[dict[str, object]] = []

    def record(ctx: TaskContext) -> None:
        seen.append(structlog.contextvars.get_contextvars())

    if kind == "async":

        async def wrap_async(ctx: TaskContext) -> None:
            record(ctx)

        tasks.register("wrap", wrap_async)
    else:
        tasks.register("wrap", record)
    task_id = backend.submit()
    await run_until(make_pool(tasks, backend), all_final(backend))
    assert seen[0]["task_id"] == str(task_id)
    assert seen[0]["gift_id"] == str(task_id * 10)
    assert seen[0]["worker_id"] == "w-1"
    assert "task_id" not in structlog.contextvars.get_contextvars()


async def test_metrics_record_processing_time_and_utilization(backend: FakeBackend) -> None:
    """Each handler run is observed by task type; utilization is running/concurrency."""
    tasks = TaskRegistry()
    registry = CollectorRegistry()
    during: list[float | None] = []

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> None:
        during.append(registry.get_sample_value("worker_busy_ratio", {"worker_id": "w-1"}))
        await asyncio.sleep(0.01)

    for _ in range(3):
        backend.submit()
    pool = make_pool(tasks, backend, concurrency=4, metrics_registry=registry)
    await run_until(pool, all_final(backend))
    count = registry.get_sample_value(
        "worker_handler_duration_seconds_count", {"task_type": "wrap"}
    )
    assert count == 3
    assert during and all(value is not None and 0 < value <= 0.75 for value in during)
    assert registry.get_sample_value("worker_busy_ratio", {"worker_id": "w-1"}) == 0
    completed = {"task_type": "wrap", "outcome": "completed"}
    assert registry.get_sample_value("worker_tasks_total", completed) == 3


async def test_run_twice_is_a_lifecycle_error(backend: FakeBackend) -> None:
    """A pool runs once; a second run() raises PoolLifecycleError."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    pool = make_pool(tasks, backend)
    pool.stop()
    await asyncio.wait_for(pool.run(), 5)
    with pytest.raises(PoolLifecycleError):
        await pool.run()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 10_000}, "concurrency"),  # with its default prefetch, over MAX_HELD
        ({"lease_s": 0}, "lease_s"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"lease_s": 1, "heartbeat_s": 1}, "heartbeat_s"),
        ({"task_types": ["load"]}, "task_types"),
        ({"task_types": []}, "task_types"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, object], field: str) -> None:
    """Zero concurrency, a bad lease or heartbeat and types without handlers are refused."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    with pytest.raises(ConfigurationError) as caught:
        make_pool(tasks, FakeBackend(), **options)
    assert caught.value.field == field


def test_default_worker_id_is_unique_and_url_safe() -> None:
    """Default worker ids differ per call and use only characters the API accepts."""
    first, second = default_worker_id(), default_worker_id()
    assert first != second
    assert all(c.isalnum() or c in "._:@-" for c in first)
