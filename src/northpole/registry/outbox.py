"""The registry's outbox table, as an :class:`~northpole.bus.outbox.OutboxSource`.

The repositories write ``gift_outbox`` rows in the same transaction as the
gift changes they describe (:mod:`northpole.registry.repository`); an
:class:`~northpole.bus.outbox.OutboxRelay` reads them through the classes here
and deletes them once the stream has them. Message ids are
``gift-outbox-<row id>``; row ids are never reused.

* :class:`SqliteOutbox`: the embedded edition; one process relays.
* :class:`~northpole.registry.postgres_outbox.PostgresOutbox`: the cluster
  edition. Every registry process runs a relay, but **only one relays at a
  time**: ``pending`` first takes a session-level advisory lock
  (:data:`RELAY_LOCK_KEY`, ``pg_try_advisory_lock``) on the outbox's own
  connection, and a relay that does not get it finds nothing to do. So
  events leave in id order (a gift's ``created`` before its status changes),
  which ``FOR UPDATE SKIP LOCKED`` across several relays would not keep. If
  the holder's process dies, its connection and lock go with it, and another
  relay takes over at its next poll; rows it had published but not deleted
  are published again under the same message ids, and the stream drops the
  duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from northpole.bus.outbox import OutboxRow
from northpole.core.sqlite import SqliteThread
from northpole.registry import sqlite_schema as sql

if TYPE_CHECKING:
    import sqlite3

#: The outbox's name in message ids (``gift-outbox-<row id>``).
OUTBOX_NAME = "gift-outbox"
#: ``pg_try_advisory_lock`` key of the one active relay (``b"giftobox"`` as an int64).
RELAY_LOCK_KEY = int.from_bytes(b"giftobox", "big", signed=True)


class SqliteOutbox:
    """The ``gift_outbox`` table of a SQLite registry file.

    Args:
        thread: The repository's database thread (its writes and these share it).
    """

    name = OUTBOX_NAME

    def __init__(self, thread: SqliteThread) -> None:
        self._thread = thread

    async def pending(self, limit: int) -> list[OutboxRow]:
        """Return up to ``limit`` of the oldest rows."""

        def read(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(sql.SELECT_OUTBOX, (limit,)).fetchall()
            return [OutboxRow(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

        return await self._thread.read(read)

    async def remove(self, ids: Sequence[int]) -> None:
        """Delete published rows."""
        if not ids:
            return
        chunks = [list(ids[i : i + sql.IN_CHUNK]) for i in range(0, len(ids), sql.IN_CHUNK)]

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in chunks:
                conn.execute(sql.DELETE_OUTBOX.format(marks=sql.marks(len(chunk))), chunk)

        await self._thread.write(delete)

    async def size(self) -> int:
        """How many rows wait."""

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql.COUNT_OUTBOX).fetchone()[0])

        return await self._thread.read(count)
