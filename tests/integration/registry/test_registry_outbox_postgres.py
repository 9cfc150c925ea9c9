"""The PostgreSQL outbox: one relay at a time, every event once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from northpole.bus.memory import MemoryStream
from northpole.bus.outbox import OutboxRelay
from northpole.core.errors import Unavailable
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen import encode
from northpole.registry.model import Gift
from northpole.registry.postgres_outbox import PostgresOutbox
from northpole.registry.postgres_repository import PostgresGiftRepository
from northpole.v1 import events_pb2
from postgres_servers import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]

pytestmark = pytest.mark.integration

NOW_MS = 1_768_435_200_000


def gifts(count: int, start: int = 0) -> list[Gift]:
    """``count`` gifts with increasing ids."""
    return [
        Gift(
            encode(
                elapsed_ms=NOW_MS - DEFAULT_EPOCH_MS + i // 4096, workshop_id=2, sequence=i % 4096
            ),
            2,
            NOW_MS + i // 4096,
            "ball",
            "c",
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
async def repos(postgres_url: str) -> AsyncIterator[list[PostgresGiftRepository]]:
    """Two repositories (two processes) on one database."""
    opened = [PostgresGiftRepository(postgres_url, epoch_ms=DEFAULT_EPOCH_MS) for _ in range(2)]
    for repo in opened:
        await repo.open()
    yield opened
    for repo in opened:
        await repo.close()


async def test_only_the_lock_holder_relays(repos: list[PostgresGiftRepository]) -> None:
    """While one outbox holds the relay lock the other sees nothing; then it takes over."""
    first, second = repos
    await first.create(gifts(3))
    assert len(await first.outbox.pending(10)) == 3
    assert await second.outbox.pending(10) == []
    await first.outbox.close()
    assert len(await second.outbox.pending(10)) == 3


async def test_two_relays_publish_each_event_once_in_order(
    repos: list[PostgresGiftRepository],
) -> None:
    """Relays of two processes on one outbox publish every event exactly once, in id order."""
    first, second = repos
    stream = MemoryStream()
    relays = [OutboxRelay(r.outbox, stream, batch=100, idle_s=0.01) for r in repos]
    runs = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        batch = gifts(1_500)
        for start in range(0, len(batch), 300):
            await (first if start % 600 else second).create(batch[start : start + 300])
        async with asyncio.timeout(30):
            while stream.last_seq < len(batch):
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    published = [stream.get(seq) for seq in range(1, stream.last_seq + 1)]
    ids = [int(events_pb2.GiftCreated.FromString(m.data).gift_id) for m in published if m]
    assert ids == [g.id for g in batch]
    assert await first.outbox.pending(10) == []


async def test_outbox_reconnects_after_its_connection_is_killed(postgres_url: str) -> None:
    """A relay whose connection (and so lock) was killed reconnects, re-takes the lock, relays."""
    async with PostgresGiftRepository(postgres_url, epoch_ms=DEFAULT_EPOCH_MS) as repo:
        await repo.create(gifts(2))
        outbox: PostgresOutbox = repo.outbox
        assert len(await outbox.pending(10)) == 2
        async with repo.raw() as conn:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            )
        assert killed == 1
        for _ in range(50):
            try:
                rows = await outbox.pending(10)
                break
            except Unavailable:  # the loss may surface once before the reconnect
                await asyncio.sleep(0.05)
        assert len(rows) == 2
        assert outbox.holds_lock
