"""The exchange store port: an etcd-shaped key-value store with revisions and transactions.

The exchange service keeps everything under the keys of :mod:`northpole.exchange.keys`
and needs only what etcd offers, so an etcd adapter implements this port
one-to-one (``get`` = Range, ``range`` = Range with a prefix end, ``txn`` =
Txn with ``mod_revision`` compares):

* Every write bumps one **global revision** counter; each key records the
  revision that created it (``create_revision``) and last changed it
  (``mod_revision``).
* :meth:`ExchangeStore.txn` is atomic: if every :class:`Compare` holds, all its
  :class:`Put` and :class:`Delete` operations apply under one new revision and
  it returns ``succeeded=True``; otherwise nothing changes. A compare against
  ``mod_revision=0`` holds when the key does not exist. No reader ever sees
  part of a transaction.
* :meth:`ExchangeStore.range` reads one consistent snapshot.
* Acknowledged writes are durable (the SQLite store: WAL with ``synchronous=FULL``).

Implementations: :class:`northpole.exchange.sqlite_store.SqliteExchangeStore`
(embedded edition); ``tests/contract/test_exchange_store_contract.py`` runs
one suite against every implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One stored key.

    Attributes:
        key: The key (see :mod:`northpole.exchange.keys`).
        value: Its value (JSON bytes for every key the service writes).
        create_revision: The revision of the write that created it.
        mod_revision: The revision of the write that last changed it.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``key`` was last changed at ``mod_revision`` (0: the key is absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    """Set ``key`` to ``value``."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``key`` (no error if it is absent)."""

    key: str


Operation = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The outcome of a transaction.

    Attributes:
        succeeded: Whether every compare held (and so every operation applied).
        revision: The store's revision after the transaction (the new one on success).
    """

    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Keys under a prefix, in key order, read at one revision."""

    kvs: list[KeyValue]
    revision: int


class ExchangeStore(Protocol):
    """Where exchanges, participants and sealed matches live."""

    async def get(self, key: str) -> KeyValue | None:
        """Return ``key``, or ``None`` if it does not exist."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """Return those of ``keys`` that exist, read at one revision."""
        ...

    async def range(self, prefix: str, *, limit: int | None = None) -> RangeResult:
        """Return the keys starting with ``prefix`` (at most ``limit``), in key order."""
        ...

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> TxnResult:
        """Apply ``operations`` atomically if every compare holds; else change nothing.

        A key named by more than one operation takes the last one.
        """
        ...

    async def revision(self) -> int:
        """Return the store's current revision (0 when nothing was ever written)."""
        ...

    async def close(self) -> None:
        """Release the store's resources (idempotent)."""
        ...
