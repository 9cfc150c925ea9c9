"""Exchange records on the key-value store: load, compare-and-swap, retry, count.

The service's writes are optimistic transactions (:mod:`northpole.exchange.store`).
:meth:`ExchangeRepository.retrying` runs one until its compares hold. Writes to
one exchange from this process take turns (one lock per exchange), so they
never retry against each other; against other processes they back off for a
random, growing while.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from northpole.core.errors import Unavailable
from northpole.exchange import keys
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.model import Exchange, Participant, Phase
from northpole.exchange.policy import ExchangeNotFound
from northpole.exchange.store import Compare, ExchangeStore, KeyValue, Put, TxnResult

_T = TypeVar("_T")


class ExchangeRepository:
    """Typed access to the exchange keys of one store.

    Args:
        store: The open store.
        write_retries: Attempts of one optimistic write before giving up (503).
    """

    def __init__(self, store: ExchangeStore, *, write_retries: int) -> None:
        self.store = store
        self._write_retries = write_retries
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._rng = random.SystemRandom()

    async def load(self, exchange_id: str) -> tuple[ExchangeRecord, KeyValue]:
        """Return an exchange's record and its state key (whose revision later writes compare).

        Raises:
            ExchangeNotFound: No such exchange (or a malformed id).
        """
        if not keys.EXCHANGE_ID_PATTERN.match(exchange_id):
            raise ExchangeNotFound(exchange_id)
        index = await self.store.get(keys.index_key(exchange_id))
        if index is None:
            raise ExchangeNotFound(exchange_id)
        year, _ = keys.decode_index(index.key, index.value)
        kv = await self.store.get(keys.state_key(year, exchange_id))
        if kv is None:
            raise ExchangeNotFound(exchange_id)
        return keys.decode_state(kv.key, kv.value), kv

    async def participant(self, exchange: Exchange, pid: str) -> KeyValue | None:
        """Return participant ``pid``'s key, or ``None``."""
        return await self.store.get(keys.participant_key(exchange.year, exchange.id, pid))

    async def participants(self, exchange: Exchange) -> list[tuple[KeyValue, Participant]]:
        """Return every participant of ``exchange`` with its key, in id order."""
        rows = (await self.store.range(keys.participants_prefix(exchange.year, exchange.id))).kvs
        return [(row, keys.decode_participant(row.key, row.value)) for row in rows]

    @staticmethod
    def index(record: ExchangeRecord) -> Put:
        """The index entry of ``record`` (to write with every phase change)."""
        return Put(keys.index_key(record.exchange.id), keys.encode_index(record))

    async def swap(self, kv: KeyValue, record: ExchangeRecord) -> TxnResult:
        """Replace the state (and index) with ``record`` if unchanged since ``kv`` was read."""
        return await self.store.txn(
            [Compare(kv.key, kv.mod_revision)],
            [Put(kv.key, keys.encode_state(record)), self.index(record)],
        )

    async def retrying(self, exchange_id: str, attempt: Callable[[], Awaitable[_T | None]]) -> _T:
        """Run ``attempt`` until it returns a value (``None``: a compare failed; try again).

        Raises:
            Unavailable: Still contended after ``write_retries`` attempts.
        """
        lock = self._locks.setdefault(exchange_id, asyncio.Lock())
        async with lock:
            for tries in range(self._write_retries):
                result = await attempt()
                if result is not None:
                    return result
                await asyncio.sleep(self._rng.uniform(0, 0.001 * 2 ** min(tries, 8)))
        raise Unavailable("too many concurrent changes to this exchange; retry", retry_after_s=1.0)

    async def phase_counts(self) -> dict[Phase, int]:
        """Count exchanges by phase (from the index)."""
        counts: dict[Phase, int] = {}
        for row in (await self.store.range(keys.INDEX_ROOT)).kvs:
            _, phase = keys.decode_index(row.key, row.value)
            counts[phase] = counts.get(phase, 0) + 1
        return counts
