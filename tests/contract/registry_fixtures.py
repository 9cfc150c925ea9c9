"""Fixtures of the GiftRepository contract suite, run once per repository implementation.

``gift_backend`` names an implementation and opens repository objects on one
shared database (a second object on the same data is how the suite tests
other processes and durability); ``gifts`` is the first such object.
Implementations: ``sqlite`` (a file in ``tmp_path``) and ``postgres`` (a fresh
database per test on the session's throwaway server, see
``tests/postgres_servers.py``). The test module imports these fixtures by name.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen import encode
from northpole.registry.model import Gift, GiftStatus
from northpole.registry.postgres_repository import PostgresGiftRepository
from northpole.registry.repository import GiftRepository
from northpole.registry.sqlite_repository import SqliteGiftRepository
from postgres_servers import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
EPOCH_MS = DEFAULT_EPOCH_MS
#: 2026-01-15T00:00:00Z: gifts are "created" around here.
START_MS = 1_768_435_200_000


@dataclass
class GiftBackend:
    """One implementation under test, able to open more repository objects on the same data."""

    name: str
    open: Callable[[], Awaitable[GiftRepository]]


def _opener(
    name: str, tmp_path: Path, opened: list[GiftRepository], request: pytest.FixtureRequest
) -> Callable[[], Awaitable[GiftRepository]]:
    if name == "sqlite":
        path = tmp_path / "registry.db"

        async def open_sqlite() -> GiftRepository:
            repo = await SqliteGiftRepository(path).open()
            opened.append(repo)
            return repo

        return open_sqlite
    if name == "postgres":
        url = request.getfixturevalue("postgres_url")

        async def open_postgres() -> GiftRepository:
            repo = PostgresGiftRepository(
                url, epoch_ms=EPOCH_MS, pool_size=4, archive_dir=tmp_path / "archive"
            )
            opened.append(await repo.open())
            return repo

        return open_postgres
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture(params=BACKENDS)
async def gift_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[GiftBackend]:
    """An implementation; every repository it opened is closed after the test."""
    opened: list[GiftRepository] = []
    yield GiftBackend(request.param, _opener(request.param, tmp_path, opened, request))
    for repo in opened:
        await repo.close()


@pytest.fixture
async def gifts(gift_backend: GiftBackend) -> GiftRepository:
    """A repository of the implementation under test, on fresh data."""
    return await gift_backend.open()


class GiftFactory:
    """Builds REQUESTED gifts whose ids encode their creation time, as the generator's do."""

    def __init__(self) -> None:
        self._sequence = itertools.count()

    def __call__(
        self,
        *,
        at_ms: int = START_MS,
        recipient_id: str = "child-1",
        gift_type: str = "train",
        workshop_id: int = 3,
        status: GiftStatus = GiftStatus.REQUESTED,
    ) -> Gift:
        """Return a new gift created at ``at_ms`` (unique id, increasing)."""
        sequence = next(self._sequence)
        at = at_ms + sequence // 4096
        gift_id = encode(
            elapsed_ms=at - EPOCH_MS, workshop_id=workshop_id, sequence=sequence % 4096
        )
        return Gift(gift_id, workshop_id, at, gift_type, recipient_id, status)

    def many(self, count: int, **kwargs: object) -> list[Gift]:
        """``count`` gifts with the same fields."""
        return [self(**kwargs) for _ in range(count)]  # type: ignore[arg-type]


@pytest.fixture
def make_gift() -> GiftFactory:
    """Builds gifts with unique, time-ordered ids."""
    return GiftFactory()
