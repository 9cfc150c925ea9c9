"""The worker pool against the real TaskService and SQLite store, in process and over the API.

Each test runs once per backend: ``local`` (LocalBackend calling the service)
and ``http`` (HttpBackend calling the real FastAPI routes through an in-memory
ASGI transport, so no socket is opened).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from northpole.bus.port import InProcessBus
from northpole.core.app import create_app
from northpole.core.auth import Role, TokenService
from northpole.core.clock import SystemClock
from northpole.core.settings import AuthSettings, Settings, TaskSettings
from northpole.tasks.backends import (
    Backoff,
    Completion,
    HttpBackend,
    LocalBackend,
    RemoteError,
    WorkerBackend,
)
from northpole.tasks.handlers import Retry, TaskContext, TaskRegistry
from northpole.tasks.model import TaskSpec, TaskState
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.service import SubmitItem, TaskService
from northpole.tasks.sqlite_store import SqliteTaskStore
from northpole.tasks.store import Claim
from northpole.tasks.worker import WorkerPool

SECRET = b"s" * 32


@dataclass
class Stack:
    """A running TaskService and a backend reaching it."""

    service: TaskService
    backend: WorkerBackend
    tokens: TokenService
    transport: httpx.AsyncBaseTransport | None

    async def submit(self, n: int, task_type: str = "wrap", **spec: object) -> list[int]:
        """Submit ``n`` tasks and return their ids."""
        items = [
            SubmitItem(TaskSpec(gift_id=100 + i, task_type=task_type, **spec))  # type: ignore[arg-type]
            for i in range(n)
        ]
        return [task.id for task in await self.service.submit(items)]

    async def states(self, ids: list[int]) -> list[TaskState]:
        """Return the states of ``ids``."""
        return [(await self.service.get(task_id)).state for task_id in ids]


@pytest.fixture(params=["local", "http"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """A service on a fresh SQLite file, reached through the parametrised backend."""
    settings = TaskSettings(lease_ms=2_000, sweep_interval_ms=20, retry_base_ms=0)
    ids = itertools.count(1_000_000)

    async def open_store() -> SqliteTaskStore:
        store = SqliteTaskStore(
            tmp_path / "tasks.db",
            partitions=settings.partitions,
            aging_ms=settings.aging_ms,
            policy=RetryPolicy(0, 2.0, 0),
        )
        return await store.open()

    registry = CollectorRegistry()
    service = TaskService(
        settings,
        open_store=open_store,
        registry=registry,
        clock=SystemClock(),
        bus=InProcessBus(),
        ids=lambda n: [next(ids) for _ in range(n)],
    )
    tokens = TokenService(SECRET, AuthSettings())
    transport: httpx.AsyncBaseTransport | None = None
    backend: WorkerBackend
    if request.param == "local":
        backend = LocalBackend(service)
    else:
        app = create_app(Settings(), [service], registry=registry, tokens=tokens)
        transport = httpx.ASGITransport(app=app)
        token = tokens.issue(sub="worker", role=Role.WORKER)
        backend = HttpBackend("http://queue.test", token, transport=transport)
    async with service.lifespan():
        yield Stack(service, backend, tokens, transport)
        await backend.close()


def pool_for(stack: Stack, registry: TaskRegistry, **options: object) -> WorkerPool:
    """Return a pool with quick timings on ``stack``."""
    settings: dict[str, object] = {
        "group": "elves",
        "concurrency": 4,
        "worker_id": "w-1",
        "lease_s": 2.0,
        "poll_wait_s": 0.1,
        "idle_s": 0.01,
        "heartbeat_s": 0.05,
        "backoff": Backoff(base_s=0.01, max_s=0.05),
        "metrics_registry": CollectorRegistry(),
    }
    settings.update(options)
    return WorkerPool(registry, stack.backend, **settings)  # type: ignore[arg-type]


async def run_until(pool: WorkerPool, done: Callable[[], object], timeout: float = 10.0) -> None:
    """Run the pool until the async predicate ``done`` is true, then stop it."""
    runner = asyncio.create_task(pool.run())
    try:
        async with asyncio.timeout(timeout):
            while not await done():  # type: ignore[misc]
                if runner.done():
                    runner.result()
                await asyncio.sleep(0.01)
    finally:
        pool.stop()
        async with asyncio.timeout(timeout):
            await runner


async def test_tasks_complete_with_results(stack: Stack) -> None:
    """Every submitted task is run once and stored COMPLETED with the handler's result."""
    tasks = TaskRegistry()
    runs: list[int] = []

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        runs.append(ctx.task_id)
        return f"gift {ctx.gift_id} wrapped in {ctx.metadata['paper']}"

    ids = await stack.submit(12, metadata={"paper": "red"})

    async def done() -> bool:
        return all(s is TaskState.COMPLETED for s in await stack.states(ids))

    await run_until(pool_for(stack, tasks), done)
    assert sorted(runs) == sorted(ids)
    first = await stack.service.get(ids[0])
    assert first.result == "gift 100 wrapped in red"
    assert first.attempts == 1


async def test_retry_and_failure_reach_the_store(stack: Stack) -> None:
    """A Retry comes back as attempt 2; an exception with no retries left ends FAILED."""
    tasks = TaskRegistry()

    @tasks.handler("wrap")
    def wrap(ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            raise Retry(delay=0, message="not yet")
        return "second time lucky"

    @tasks.handler("load")
    async def load(ctx: TaskContext) -> None:
        raise ValueError("sleigh full")

    [retried] = await stack.submit(1)
    [failed] = await stack.submit(1, task_type="load", max_retries=0)

    async def done() -> bool:
        return all(s.is_final for s in await stack.states([retried, failed]))

    await run_until(pool_for(stack, tasks), done)
    task = await stack.service.get(retried)
    assert (task.state, task.attempts, task.result) == (TaskState.COMPLETED, 2, "second time lucky")
    bad = await stack.service.get(failed)
    assert bad.state is TaskState.FAILED
    assert bad.last_error is not None and "ValueError: sleigh full" in bad.last_error


async def test_cancelled_task_is_signalled_and_not_acked(stack: Stack) -> None:
    """An operator's cancel reaches the handler through the heartbeat; the task stays FAILED."""
    tasks = TaskRegistry()
    began = asyncio.Event()
    noticed = asyncio.Event()

    @tasks.handler("wrap")
    async def wrap(ctx: TaskContext) -> str:
        began.set()
        await ctx.cancelled.wait()
        noticed.set()
        return "should be dropped"

    [task_id] = await stack.submit(1)
    pool = pool_for(stack, tasks)
    runner = asyncio.create_task(pool.run())
    await asyncio.wait_for(began.wait(), 10)
    await stack.service.cancel(task_id)
    await asyncio.wait_for(noticed.wait(), 10)
    pool.stop()
    await asyncio.wait_for(runner, 10)
    task = await stack.service.get(task_id)
    assert task.state is TaskState.FAILED and task.result is None
    assert task.last_error is not None and task.last_error.startswith("cancelled")


async def test_stale_fence_is_a_per_item_result(stack: Stack) -> None:
    """Acking with an old fence is refused for that item only, with code stale_fence."""
    [task_id] = await stack.submit(1)
    reply = await stack.backend.claim(Claim("w-2", "elves", lease_ms=2_000), wait_s=0)
    [assignment] = reply.tasks
    results = await stack.backend.ack(
        "w-2",
        [
            Completion(task_id, assignment.fence + 1, "wrong fence"),
            Completion(task_id, assignment.fence, "right fence"),
        ],
        [],
    )
    assert [(r.ok, r.error_code) for r in results] == [(False, "stale_fence"), (True, None)]
    assert results[1].state == "COMPLETED"


@pytest.mark.parametrize("stack", ["http"], indirect=True)
async def test_participant_token_is_refused_without_retry(stack: Stack) -> None:
    """Over HTTP, a token whose role may not claim raises RemoteError 403 at once."""
    token = stack.tokens.issue(sub="kid", role=Role.PARTICIPANT)
    backend = HttpBackend("http://queue.test", token, transport=stack.transport)
    with pytest.raises(RemoteError) as caught:
        await backend.claim(Claim("w-3", "elves"), wait_s=0)
    await backend.close()
    assert (caught.value.status_code, caught.value.code) == (403, "forbidden")
