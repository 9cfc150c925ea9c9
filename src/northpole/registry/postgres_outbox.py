"""The ``gift_outbox`` table of a PostgreSQL registry, relayed by one process at a time.

See :mod:`northpole.registry.outbox` for why one relay at a time (a
session-level advisory lock) rather than ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from northpole.bus.outbox import OutboxRow
from northpole.core.errors import Unavailable
from northpole.registry.outbox import OUTBOX_NAME, RELAY_LOCK_KEY
from northpole.registry.postgres_driver import DRIVER_ERRORS


class PostgresOutbox:
    """The ``gift_outbox`` table of a PostgreSQL registry, relayed by one process at a time.

    Args:
        connect: Opens a new asyncpg connection (the outbox keeps one of its own:
            the advisory lock lives as long as it does).
    """

    name = OUTBOX_NAME

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._conn: Any = None
        self.holds_lock = False

    async def pending(self, limit: int) -> list[OutboxRow]:
        """Return up to ``limit`` of the oldest rows if this relay holds the lock, else none.

        Raises:
            Unavailable: The database could not be reached (the relay retries).
        """
        try:
            conn = await self._connection()
            if not self.holds_lock:
                self.holds_lock = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY)
                )
                if not self.holds_lock:
                    return []
            rows = await conn.fetch(
                "SELECT id, subject, data FROM gift_outbox ORDER BY id LIMIT $1", limit
            )
        except DRIVER_ERRORS as exc:
            await self._drop()
            raise Unavailable(f"registry outbox: {exc}", retry_after_s=1.0) from exc
        return [OutboxRow(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    async def remove(self, ids: Sequence[int]) -> None:
        """Delete published rows.

        Raises:
            Unavailable: The database could not be reached (the rows stay and are
                published again, under the same message ids).
        """
        if not ids:
            return
        try:
            conn = await self._connection()
            await conn.execute("DELETE FROM gift_outbox WHERE id = ANY($1::bigint[])", list(ids))
        except DRIVER_ERRORS as exc:
            await self._drop()
            raise Unavailable(f"registry outbox: {exc}", retry_after_s=1.0) from exc

    async def size(self) -> int:
        """How many rows wait."""
        try:
            conn = await self._connection()
            return int(await conn.fetchval("SELECT count(*) FROM gift_outbox"))
        except DRIVER_ERRORS as exc:
            await self._drop()
            raise Unavailable(f"registry outbox: {exc}", retry_after_s=1.0) from exc

    async def close(self) -> None:
        """Close the connection (which releases the lock)."""
        await self._drop()

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self.holds_lock = False
            self._conn = await self._connect()
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.holds_lock = False
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except DRIVER_ERRORS:  # closing a broken connection; nothing to save
                conn.terminate()
