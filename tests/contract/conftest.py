"""Fixtures of the TaskStore contract suite, run once per store implementation.

``backend`` names an implementation and opens store objects on one shared
backing store (a second object on the same data is how the suite tests
concurrency between processes and durability); ``store`` is the first such
object. Each implementation is a branch of ``_opener`` and a name in
``BACKENDS``: ``sqlite`` (a file in ``tmp_path``), ``redis`` (one throwaway
``redis-server``) and ``redis-cluster`` (a throwaway 3-master Redis Cluster);
the Redis ones share their session's servers and keep tests apart by key
namespace. Stores take ``now_ms`` arguments, so a ``FakeClock`` drives time by
hand.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from northpole.core.clock import FakeClock
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_store import RedisTaskStore
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import partition_of
from northpole.tasks.sqlite_store import SqliteTaskStore
from northpole.tasks.store import TaskStore
from redis_servers import redis_cluster, redis_server, unique_namespace

__all__ = ["redis_cluster", "redis_server"]

BACKENDS = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("redis-cluster", marks=pytest.mark.integration),
]
START_MS = 1_767_225_600_000


@dataclass(frozen=True)
class ContractConfig:
    """The settings every store under test is built with."""

    partitions: int = 8
    aging_ms: int = 1_000
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(1_000, 2.0, 60_000))


CONFIG = ContractConfig()


@dataclass
class Backend:
    """One implementation under test, able to open more store objects on the same data."""

    name: str
    open: Callable[[], Awaitable[TaskStore]]


@pytest.fixture
def config() -> ContractConfig:
    """The partitions, aging and retry policy of the stores under test."""
    return CONFIG


def _opener(
    name: str, tmp_path: Path, opened: list[TaskStore], request: pytest.FixtureRequest
) -> Callable[[], Awaitable[TaskStore]]:
    """Return a function opening a new store object of implementation ``name``."""
    if name in ("redis", "redis-cluster"):
        server = request.getfixturevalue("redis_server" if name == "redis" else "redis_cluster")
        namespace = unique_namespace()
        seeds = itertools.count(7)

        async def open_redis() -> TaskStore:
            store = RedisTaskStore(
                server.url,
                partitions=CONFIG.partitions,
                aging_ms=CONFIG.aging_ms,
                policy=CONFIG.policy,
                rng=random.Random(next(seeds)),
                namespace=namespace,
                # The contract has an idle worker steal at every claim; how the Redis
                # store spaces out its looks at other partitions is tested on its own.
                steal_every_s=0.0,
            )
            opened.append(await store.open())
            return store

        return open_redis
    if name == "sqlite":
        path = tmp_path / "tasks.db"
        seeds = itertools.count(7)

        async def open_sqlite() -> TaskStore:
            store = SqliteTaskStore(
                path,
                partitions=CONFIG.partitions,
                aging_ms=CONFIG.aging_ms,
                policy=CONFIG.policy,
                rng=random.Random(next(seeds)),
            )
            opened.append(await store.open())
            return store

        return open_sqlite
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """An implementation; every store it opened is closed after the test."""
    opened: list[TaskStore] = []
    yield Backend(request.param, _opener(request.param, tmp_path, opened, request))
    for store in opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> TaskStore:
    """A store of the implementation under test, on fresh data."""
    return await backend.open()


@pytest.fixture
def clock() -> FakeClock:
    """The test's time; pass ``clock.now_ms()`` to the store."""
    return FakeClock(START_MS)


class TaskFactory:
    """Builds PENDING Task records the way the service does, with increasing ids."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._ids = itertools.count(1_000)

    def __call__(
        self,
        *,
        gift_id: int | None = None,
        task_type: str = "wrap",
        priority: int = 0,
        dependencies: tuple[int, ...] = (),
        max_retries: int = 3,
        deadline_ms: int | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        task_id: int | None = None,
    ) -> Task:
        """Return a new PENDING task available now; ``gift_id`` defaults to the task id."""
        task_id = next(self._ids) if task_id is None else task_id
        gift = task_id if gift_id is None else gift_id
        now = self._clock.now_ms()
        return Task(
            id=task_id,
            gift_id=gift,
            task_type=task_type,
            priority=priority,
            dependencies=dependencies,
            max_retries=max_retries,
            deadline_ms=deadline_ms,
            metadata=dict(metadata or {}),
            idempotency_key=idempotency_key,
            partition=partition_of(gift, CONFIG.partitions),
            state=TaskState.PENDING,
            created_ms=now,
            updated_ms=now,
            available_ms=now,
        )


@pytest.fixture
def make_task(clock: FakeClock) -> TaskFactory:
    """Builds tasks stamped with the fake clock's time."""
    return TaskFactory(clock)
