"""Background loops of the task queue stop on one cancel, even one a driver loses.

On Python 3.11 a driver call can swallow the cancel that lands in it
(``asyncio.wait_for``'s race; measured with redis-py: see
:mod:`northpole.core.lifecycle`). The fakes here lose every cancel that lands
in them; the sweeper and the Redis wake-up listener must stop all the same, or
the process they belong to never exits (seen: a worker that drained, then
hung in its sweeper's cancel until killed).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from northpole.bus.port import InProcessBus
from northpole.core.clock import SystemClock
from northpole.core.settings import TaskSettings
from northpole.tasks.redis_keys import Keys
from northpole.tasks.redis_wake import WorkSignal
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.service import TaskService
from northpole.tasks.sqlite_store import SqliteTaskStore


async def lose_a_cancel(entered: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``; a cancel landing meanwhile is swallowed."""
    entered.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)


class SweepLosesCancels:
    """A SQLite store whose sweep loses a cancel that lands in it."""

    def __init__(self, inner: SqliteTaskStore) -> None:
        self._inner = inner
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def sweep(self, **options: Any) -> Any:
        await lose_a_cancel(self.entered, 0.05)
        return await self._inner.sweep(**options)


async def test_the_sweeper_stops_when_its_sweep_lost_the_cancel(tmp_path: Path) -> None:
    """Leaving the service's lifespan during such a sweep returns within seconds."""
    settings = TaskSettings(sweep_interval_ms=10)
    stores: list[SweepLosesCancels] = []

    async def open_store() -> Any:
        inner = SqliteTaskStore(
            tmp_path / "tasks.db",
            partitions=settings.partitions,
            aging_ms=settings.aging_ms,
            policy=RetryPolicy(),
        )
        stores.append(SweepLosesCancels(await inner.open()))
        return stores[0]

    service = TaskService(
        settings,
        open_store=open_store,
        registry=CollectorRegistry(),
        clock=SystemClock(),
        bus=InProcessBus(),
    )
    lifespan = service.lifespan()
    await lifespan.__aenter__()
    await stores[0].entered.wait()
    await asyncio.wait_for(lifespan.__aexit__(None, None, None), timeout=3)


class PubSubLosesCancels:
    """A Pub/Sub connection that hears nothing and loses a cancel landing in a read."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def subscribe(self, *channels: str) -> None:
        return None

    async def get_message(self, **options: Any) -> None:
        await lose_a_cancel(self.entered, 0.05)

    async def aclose(self) -> None:
        return None


class ClientLosesCancels:
    """Hands out one :class:`PubSubLosesCancels`."""

    def __init__(self) -> None:
        self.pubsub_ = PubSubLosesCancels()

    def pubsub(self) -> PubSubLosesCancels:
        return self.pubsub_


async def test_the_wake_up_listener_stops_when_its_read_lost_the_cancel() -> None:
    """WorkSignal.close returns within seconds though every read swallows the cancel."""
    client = ClientLosesCancels()
    signal = WorkSignal(client, Keys("np"), 4)  # type: ignore[arg-type]
    await signal.wait(-1, 0.0)  # starts the listener
    await client.pubsub_.entered.wait()
    assert signal.listening
    await asyncio.wait_for(signal.close(), timeout=3)
    assert not signal.listening
