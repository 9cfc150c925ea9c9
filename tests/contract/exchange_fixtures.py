"""Fixtures of the ExchangeStore contract suite, run once per store implementation.

``exchange_backend`` names an implementation and opens store objects on one
shared backing store (a second object on the same data is how the suite
tests other processes and durability); ``kv`` is the first such object. To
add an implementation (etcd), add a branch to ``_opener`` and its name to
``BACKENDS``. The test module imports these fixtures by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from northpole.exchange.sqlite_store import SqliteExchangeStore
from northpole.exchange.store import ExchangeStore

BACKENDS = ["sqlite"]


@dataclass
class ExchangeBackend:
    """One implementation under test, able to open more store objects on the same data."""

    name: str
    open: Callable[[], Awaitable[ExchangeStore]]
    path: Path | None = None


def _opener(
    name: str, tmp_path: Path, opened: list[ExchangeStore]
) -> tuple[Callable[[], Awaitable[ExchangeStore]], Path | None]:
    """Return a function opening a new store object of implementation ``name``."""
    if name == "sqlite":
        path = tmp_path / "exchange.db"

        async def open_sqlite() -> ExchangeStore:
            store = await SqliteExchangeStore(path).open()
            opened.append(store)
            return store

        return open_sqlite, path
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture(params=BACKENDS)
async def exchange_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ExchangeBackend]:
    """An implementation; every store it opened is closed after the test."""
    opened: list[ExchangeStore] = []
    open_store, path = _opener(request.param, tmp_path, opened)
    yield ExchangeBackend(request.param, open_store, path)
    for store in opened:
        await store.close()


@pytest.fixture
async def kv(exchange_backend: ExchangeBackend) -> ExchangeStore:
    """A store of the implementation under test, on fresh data."""
    return await exchange_backend.open()
