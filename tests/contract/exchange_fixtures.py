"""Fixtures of the ExchangeStore contract suite, run once per store implementation.

``exchange_backend`` names an implementation and opens store objects on one
shared backing store (a second object on the same data is how the suite
tests other processes and durability); ``kv`` is the first such object. To
add an implementation, add a branch to ``_opener`` and its name to
``BACKENDS``. The test module imports these fixtures by name.

``etcd`` runs each test on a throwaway one-member etcd of its own (so a new
store is at revision 0), under a key root, with ``--max-txn-ops`` raised to
:data:`ETCD_MAX_TXN_OPS`: the port's one-transaction commit of a 2,000-key
exchange needs it (the matcher replicas' batched commit does not).
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import etcd_servers
from etcd_servers import running_cluster
from northpole.exchange.etcd_store import EtcdExchangeStore
from northpole.exchange.sqlite_store import SqliteExchangeStore
from northpole.exchange.store import ExchangeStore

BACKENDS = ["sqlite", pytest.param("etcd", marks=pytest.mark.integration)]
#: ``--max-txn-ops`` of the contract suite's etcd.
ETCD_MAX_TXN_OPS = 4_096
ETCD_ROOT = "/northpole-contract"


@contextmanager
def etcd_with_big_transactions(root: Path) -> Iterator[list[str]]:
    """Run a one-member etcd accepting :data:`ETCD_MAX_TXN_OPS` operations a transaction.

    Yields its client URLs. The member is the one of ``tests/etcd_servers.py``,
    started through a wrapper that adds the flag.
    """
    if etcd_servers.ETCD is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    root.mkdir(parents=True, exist_ok=True)
    wrapper = root / "etcd-big-txn"
    wrapper.write_text(
        f'#!/bin/sh\nexec {etcd_servers.ETCD} "$@" --max-txn-ops={ETCD_MAX_TXN_OPS}\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    real, etcd_servers.ETCD = etcd_servers.ETCD, str(wrapper)
    try:
        with running_cluster(root / "cluster", 1) as cluster:
            etcd_servers.ETCD = real
            yield cluster.endpoints
    finally:
        etcd_servers.ETCD = real


@dataclass
class ExchangeBackend:
    """One implementation under test, able to open more store objects on the same data."""

    name: str
    open: Callable[[], Awaitable[ExchangeStore]]
    path: Path | None = None


def _opener(
    name: str, tmp_path: Path, opened: list[ExchangeStore], stack: ExitStack
) -> tuple[Callable[[], Awaitable[ExchangeStore]], Path | None]:
    """Return a function opening a new store object of implementation ``name``."""
    if name == "sqlite":
        path = tmp_path / "exchange.db"

        async def open_sqlite() -> ExchangeStore:
            store = await SqliteExchangeStore(path).open()
            opened.append(store)
            return store

        return open_sqlite, path
    if name == "etcd":
        endpoints = stack.enter_context(etcd_with_big_transactions(tmp_path / "etcd"))

        async def open_etcd() -> ExchangeStore:
            store = await EtcdExchangeStore.connect(
                endpoints, root=ETCD_ROOT, max_txn_ops=ETCD_MAX_TXN_OPS
            )
            opened.append(store)
            return store

        return open_etcd, None
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture(params=BACKENDS)
async def exchange_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ExchangeBackend]:
    """An implementation; every store it opened is closed after the test."""
    opened: list[ExchangeStore] = []
    with ExitStack() as stack:
        open_store, path = _opener(request.param, tmp_path, opened, stack)
        yield ExchangeBackend(request.param, open_store, path)
        for store in opened:
            await store.close()


@pytest.fixture
async def kv(exchange_backend: ExchangeBackend) -> ExchangeStore:
    """A store of the implementation under test, on fresh data."""
    return await exchange_backend.open()
