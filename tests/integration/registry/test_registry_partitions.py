"""Monthly partitions on a throwaway PostgreSQL: upkeep, archive to files, restore, CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from northpole.core.errors import Conflict
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen import encode
from northpole.registry.model import Gift, GiftNotFound, GiftQuery
from northpole.registry.partitions import Month
from northpole.registry.postgres_repository import PostgresGiftRepository
from postgres_servers import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]

pytestmark = pytest.mark.integration

NOW_MS = 1_781_481_600_000  # 2026-06-15
OLD_MS = 1_739_577_600_000  # 2025-02-15, past a 12-month retention at NOW_MS
DAY_MS = 86_400_000
#: The ``northpole`` CLI with the registry commands mounted as ``northpole registry``.
CLI = (
    "from northpole.cli import main, registry_commands;"
    "main.app.add_typer(registry_commands.app, name='registry');"
    "main.main()"
)


def northpole(*args: str) -> str:
    """Run ``northpole registry <args>`` in a new process; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", CLI, "registry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def gift_at(at_ms: int, sequence: int) -> Gift:
    """A gift created at ``at_ms``."""
    gift_id = encode(elapsed_ms=at_ms - DEFAULT_EPOCH_MS, workshop_id=1, sequence=sequence)
    return Gift(gift_id, 1, at_ms, "ball", f"child-{sequence % 3}")


@pytest.fixture
async def repo(postgres_url: str, tmp_path: Path) -> AsyncIterator[PostgresGiftRepository]:
    """A migrated repository archiving to ``tmp_path/archive``."""
    repository = PostgresGiftRepository(
        postgres_url, epoch_ms=DEFAULT_EPOCH_MS, archive_dir=tmp_path / "archive"
    )
    async with repository:
        yield repository


async def test_upkeep_creates_months_ahead(repo: PostgresGiftRepository) -> None:
    """Upkeep creates partitions for the current month and the months ahead."""
    created, archived = await repo.upkeep(NOW_MS, ahead=2, retention_months=12)
    assert created == [Month(2026, 6), Month(2026, 7), Month(2026, 8)]
    assert archived == []
    async with repo.partitions() as manager:
        assert await manager.attached() == created


async def test_old_month_is_archived_and_restored(repo: PostgresGiftRepository) -> None:
    """A month past retention goes to a gzip file with a manifest, and restore brings it back."""
    old = [gift_at(OLD_MS, i) for i in range(50)]
    new = [gift_at(NOW_MS, i) for i in range(5)]
    await repo.create(old + new)
    _, archived = await repo.upkeep(NOW_MS, ahead=1, retention_months=12)
    (done,) = archived
    assert (done.month, done.rows) == (Month.of(old[0].created_ms), 50)
    manifest = json.loads(done.path.with_name(f"{done.month.table}.json").read_text())
    assert manifest["rows"] == 50
    assert gzip.decompress(done.path.read_bytes()).startswith(b"PGCOPY\n")
    with pytest.raises(GiftNotFound):
        await repo.get(old[0].id)
    assert len((await repo.find(GiftQuery(limit=1000))).gifts) == 5
    async with repo.partitions() as manager:
        restored = await manager.restore(done.path)
    assert restored.rows == 50
    assert await repo.get(old[7].id) == old[7]


async def test_restore_into_a_month_with_rows_is_refused(repo: PostgresGiftRepository) -> None:
    """Restoring over a partition that holds rows raises Conflict and changes nothing."""
    old = [gift_at(OLD_MS, i) for i in range(3)]
    await repo.create(old)
    async with repo.partitions() as manager:
        done = await manager.archive(Month.of(old[0].created_ms))
        await manager.restore(done.path)
        with pytest.raises(Conflict):
            await manager.restore(done.path)
    assert len((await repo.find(GiftQuery())).gifts) == 3


async def test_interrupted_archive_is_finished_by_the_next_upkeep(
    repo: PostgresGiftRepository,
) -> None:
    """A partition left detached (a crash after DETACH) is archived by the next upkeep."""
    gifts = [gift_at(NOW_MS, i) for i in range(4)]
    await repo.create(gifts)
    month = Month.of(NOW_MS)
    async with repo.raw() as conn:
        await conn.execute(f"ALTER TABLE gifts DETACH PARTITION {month.table}")
    _, archived = await repo.upkeep(NOW_MS, ahead=0, retention_months=12)
    assert [(a.month, a.rows) for a in archived] == [(month, 4)]
    async with repo.partitions() as manager:
        assert await manager.detached() == []


def test_cli_archives_and_restores_a_month(postgres_url: str, tmp_path: Path) -> None:
    """`northpole registry archive --month` and `restore` move a month out and back."""
    import asyncio

    gifts = [gift_at(NOW_MS - 40 * DAY_MS, i) for i in range(6)]

    async def seed() -> None:
        async with PostgresGiftRepository(postgres_url, epoch_ms=DEFAULT_EPOCH_MS) as repo:
            await repo.create(gifts)

    asyncio.run(seed())
    month = str(Month.of(gifts[0].created_ms))
    common = ["--database-url", postgres_url, "--json"]
    out = northpole("archive", *common, "--archive-dir", str(tmp_path), "--month", month)
    (archived,) = json.loads(out)
    assert archived["rows"] == 6
    listed = json.loads(northpole("partitions", *common))
    assert month not in [p["month"] for p in listed]
    back = json.loads(northpole("restore", archived["file"], *common))
    assert back["rows"] == 6
    assert json.loads(northpole("migrate", *common))["version"] == "0001"
