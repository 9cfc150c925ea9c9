"""Acknowledged gift writes survive ``kill -9``: of the writer, and of PostgreSQL too.

A child process registers gifts in batches of 100 in a loop and prints the
ids of each batch once ``create`` returned. The test kills it with SIGKILL
mid-flight (and, on PostgreSQL, SIGKILLs the server as well and restarts it),
then checks that every printed id is stored. PostgreSQL runs with its default
``fsync=on`` here; SQLite with WAL and ``synchronous=FULL``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.registry.model import GiftNotFound
from northpole.registry.postgres_repository import PostgresGiftRepository
from northpole.registry.repository import GiftRepository
from northpole.registry.sqlite_repository import SqliteGiftRepository
from postgres_servers import PostgresProcess, remove, start_postgres

pytestmark = pytest.mark.integration

WRITER = """
import asyncio, sys
from pathlib import Path
from northpole.idgen import IdGenerator
from northpole.registry.model import NewGift, new_gift

async def main(kind, target):
    if kind == "sqlite":
        from northpole.registry.sqlite_repository import SqliteGiftRepository
        repo = SqliteGiftRepository(Path(target))
    else:
        from northpole.registry.postgres_repository import PostgresGiftRepository
        repo = PostgresGiftRepository(target, epoch_ms={epoch})
    await repo.open()
    ids = IdGenerator(workshop_id=9)
    while True:
        batch = ids.next_ids(100)
        await repo.create([new_gift(i, NewGift("ball", "c"), epoch_ms={epoch}) for i in batch])
        print(" ".join(map(str, batch)), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
""".replace("{epoch}", str(DEFAULT_EPOCH_MS))


def write_then_kill(kind: str, target: str, batches: int = 30) -> list[int]:
    """Run the writer until it acknowledged ``batches`` batches, SIGKILL it, return acked ids."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acked: list[int] = []
    try:
        deadline = time.monotonic() + 60
        assert child.stdout is not None
        while len(acked) < batches * 100 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            words = line.split()
            if words and all(word.isdigit() for word in words):  # skip log lines
                acked += [int(word) for word in words]
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert len(acked) >= batches * 100, "the writer did not get going"
    return acked


async def missing(repo: GiftRepository, ids: list[int]) -> list[int]:
    """The ids of ``ids`` that are not stored."""
    lost = []
    for gift_id in ids:
        try:
            await repo.get(gift_id)
        except GiftNotFound:
            lost.append(gift_id)
    return lost


async def test_sqlite_keeps_acknowledged_gifts_after_kill(tmp_path: Path) -> None:
    """Every gift batch the writer saw acknowledged is in the SQLite file after SIGKILL."""
    path = tmp_path / "registry.db"
    acked = write_then_kill("sqlite", str(path))
    async with SqliteGiftRepository(path) as repo:
        assert await missing(repo, acked) == []


def restart_after_kill(server: PostgresProcess) -> None:
    """Start the server again after SIGKILL (its backends need a moment to exit)."""
    for _ in range(40):
        try:
            server.restart()
            return
        except RuntimeError:
            time.sleep(0.25)
    raise AssertionError(f"postgres did not restart: {server.log()[-2000:]}")


async def test_postgres_keeps_acknowledged_gifts_after_kill_of_writer_and_server() -> None:
    """Every acknowledged batch survives SIGKILL of the writer and then of PostgreSQL itself."""
    server = start_postgres(fsync=True)
    try:
        name = server.create_database()
        url = server.url(name)
        acked = write_then_kill("postgres", url)
        server.kill()
        restart_after_kill(server)
        async with PostgresGiftRepository(url, epoch_ms=DEFAULT_EPOCH_MS) as repo:
            assert await missing(repo, acked) == []
    finally:
        remove(server)
