"""The embedded edition's gift repository: one SQLite file in the data directory.

Lifecycle (an async context manager, or ``open`` / ``close`` by hand)::

    async with SqliteGiftRepository(path) as gifts:
        await gifts.create([...])

**Durability.** WAL with ``synchronous=FULL`` (see :mod:`northpole.core.sqlite`):
a write returns after its ``COMMIT`` reached the disk, so it survives
``kill -9`` and power loss. Writes run on one database thread; writes that
queue up while it is busy share one transaction and one fsync, each in its own
savepoint, so each is still all-or-nothing.

**Batches** are one ``executemany`` into ``gifts`` and one into ``gift_outbox``,
in the caller's savepoint. The schema and SQL are in
:mod:`northpole.registry.sqlite_schema`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from northpole.core.errors import Conflict, Unavailable
from northpole.core.sqlite import SqliteThread
from northpole.registry import events, lifecycle
from northpole.registry import sqlite_schema as sql
from northpole.registry.lifecycle import TaskSignal
from northpole.registry.model import (
    Cursor,
    Gift,
    GiftNotFound,
    GiftPage,
    GiftPatch,
    GiftQuery,
    GiftStatus,
    StatusChange,
)
from northpole.registry.outbox import SqliteOutbox
from northpole.registry.settings import LifecycleTaskTypes


def _gift(row: Sequence[Any]) -> Gift:
    return Gift(
        id=row[0],
        workshop_id=row[1],
        created_ms=row[2],
        gift_type=row[3],
        recipient_id=row[4],
        status=GiftStatus(row[5]),
    )


def _row(gift: Gift) -> tuple[int, int, int, str, str, str]:
    return (
        gift.id,
        gift.workshop_id,
        gift.created_ms,
        gift.gift_type,
        gift.recipient_id,
        gift.status.value,
    )


def _page_sql(query: GiftQuery) -> tuple[str, list[object]]:
    """The listing's SELECT and its parameters, from constant fragments."""
    where: list[str] = []
    params: list[object] = []
    if query.recipient_id is not None:
        where.append(sql.WHERE_RECIPIENT)
        params.append(query.recipient_id)
    if query.status is not None:
        where.append(sql.WHERE_STATUS)
        params.append(query.status.value)
    if query.since_ms is not None:
        where.append(sql.WHERE_SINCE)
        params.append(query.since_ms)
    if query.after is not None:
        where.append(sql.WHERE_AFTER)
        params += [query.after.created_ms, query.after.id]
    text = sql.SELECT_GIFTS + (" WHERE " + " AND ".join(where) if where else "") + sql.ORDER_PAGE
    params.append(query.limit + 1)
    return text, params


def page_of(rows: Sequence[Gift], limit: int) -> GiftPage:
    """A page from up to ``limit + 1`` gifts (one more than fits means there is a next page)."""
    gifts = list(rows[:limit])
    more = len(rows) > limit and gifts
    return GiftPage(gifts, Cursor(gifts[-1].created_ms, gifts[-1].id) if more else None)


class SqliteGiftRepository:
    """Gifts and their outbox in one SQLite file.

    Args:
        path: The database file (created with its schema if missing).
        busy_timeout_ms: How long to wait for another process's write lock.
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._thread = SqliteThread(
            path, busy_timeout_ms=busy_timeout_ms, migrate=sql.migrate, label="gift registry"
        )
        self._outbox = SqliteOutbox(self._thread)
        self._open = False

    @property
    def outbox(self) -> SqliteOutbox:
        """The ``gift_outbox`` table."""
        return self._outbox

    async def open(self) -> SqliteGiftRepository:
        """Open the file (creating the schema); return ``self``."""
        await self._thread.start()
        self._open = True
        return self

    async def close(self) -> None:
        """Finish pending calls and close the file."""
        if self._open:
            self._open = False
            await self._thread.stop()

    async def __aenter__(self) -> SqliteGiftRepository:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check(self) -> None:
        if not self._open:
            raise Unavailable("the gift registry database is not open")

    async def create(self, gifts: Sequence[Gift]) -> None:
        """Store new gifts and their ``gift.created`` events, all or none."""
        self._check()
        if not gifts:
            return
        rows = [_row(gift) for gift in gifts]
        outbox = [events.created_event(gift) for gift in gifts]

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(sql.INSERT_GIFT, rows)
            except sqlite3.IntegrityError as exc:
                # Raised as our error, so only this call's savepoint is rolled back.
                raise Conflict(f"a gift with one of these ids exists: {exc}", field="id") from exc
            conn.executemany(sql.INSERT_OUTBOX, outbox)

        await self._thread.write(write)

    async def get(self, gift_id: int) -> Gift:
        """Return one gift (GiftNotFound if none)."""
        self._check()

        def read(conn: sqlite3.Connection) -> Gift:
            row = conn.execute(sql.SELECT_GIFT, (gift_id,)).fetchone()
            if row is None:
                raise GiftNotFound(gift_id)
            return _gift(row)

        return await self._thread.read(read)

    async def find(self, query: GiftQuery) -> GiftPage:
        """Return one page of gifts matching ``query``."""
        self._check()
        text, params = _page_sql(query)

        def read(conn: sqlite3.Connection) -> list[Gift]:
            return [_gift(row) for row in conn.execute(text, params)]

        return page_of(await self._thread.read(read), query.limit)

    async def patch(self, gift_id: int, patch: GiftPatch) -> Gift:
        """Change the operator's fields of one gift; return it."""
        self._check()

        def write(conn: sqlite3.Connection) -> Gift:
            if not patch.empty:
                conn.execute(sql.UPDATE_FIELDS, (patch.gift_type, patch.recipient_id, gift_id))
            row = conn.execute(sql.SELECT_GIFT, (gift_id,)).fetchone()
            if row is None:
                raise GiftNotFound(gift_id)
            return _gift(row)

        return await self._thread.write(write)

    async def follow(
        self, signals: Sequence[TaskSignal], types: LifecycleTaskTypes
    ) -> list[StatusChange]:
        """Apply task signals to their gifts' statuses in one transaction."""
        self._check()
        ids = list({signal.gift_id for signal in signals})
        if not ids:
            return []

        def write(conn: sqlite3.Connection) -> list[StatusChange]:
            current: dict[int, GiftStatus] = {}
            for start in range(0, len(ids), sql.IN_CHUNK):
                chunk = ids[start : start + sql.IN_CHUNK]
                query = sql.SELECT_STATUSES.format(marks=sql.marks(len(chunk)))
                current.update((row[0], GiftStatus(row[1])) for row in conn.execute(query, chunk))
            changes = lifecycle.plan(current, signals, types)
            final = lifecycle.final_statuses(changes)
            conn.executemany(sql.UPDATE_STATUS, [(s.value, i) for i, s in final.items()])
            conn.executemany(sql.INSERT_OUTBOX, [events.status_event(c) for c in changes])
            return changes

        return await self._thread.write(write)

    async def count_by_status(self) -> dict[GiftStatus, int]:
        """How many gifts are in each status."""
        self._check()

        def read(conn: sqlite3.Connection) -> dict[GiftStatus, int]:
            counts = dict.fromkeys(GiftStatus, 0)
            for status, count in conn.execute(sql.COUNT_BY_STATUS):
                counts[GiftStatus(status)] = int(count)
            return counts

        return await self._thread.read(read)
