"""The embedded edition's exchange store: an etcd-shaped key-value table in one SQLite file.

**Schema** (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    kv(key TEXT PRIMARY KEY, value BLOB, create_revision INTEGER, mod_revision INTEGER)
    meta(name TEXT PRIMARY KEY, value INTEGER)     -- ('revision', <global revision>)

Keys compare as their UTF-8 bytes (SQLite's BINARY collation), the order etcd
uses, so a prefix is the half-open interval ``[prefix, prefix_end)``.

All calls go through one :class:`~northpole.core.sqlite.SqliteThread`: reads
see one snapshot, and a transaction checks its compares and applies its
operations inside one SQLite write transaction (WAL, ``synchronous=FULL``),
so it is atomic and durable once it returns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from northpole.core.errors import ConfigurationError, Unavailable
from northpole.core.sqlite import SqliteThread
from northpole.exchange.store import (
    Compare,
    Delete,
    KeyValue,
    Operation,
    Put,
    RangeResult,
    TxnResult,
)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""
_SELECT = "SELECT key, value, create_revision, mod_revision FROM kv"
_GET = _SELECT + " WHERE key = ?"
_RANGE = _SELECT + " WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
_RANGE_ALL = _SELECT + " WHERE key >= ? ORDER BY key LIMIT ?"
_MOD_REVISION = "SELECT mod_revision FROM kv WHERE key = ?"
_REVISION = "SELECT value FROM meta WHERE name = 'revision'"
_SET_REVISION = "UPDATE meta SET value = ? WHERE name = 'revision'"
_PUT = (
    "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision"
)
_DELETE = "DELETE FROM kv WHERE key = ?"
_NO_LIMIT = -1


def migrate(conn: sqlite3.Connection, *, path: Path) -> None:
    """Create the schema in a new file, or check the version of an existing one.

    Raises:
        ConfigurationError: The file holds another schema version.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.executescript(
            "BEGIN IMMEDIATE;" + SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
        )
    elif version != SCHEMA_VERSION:
        raise ConfigurationError(
            f"exchange store {path}: schema version {version}, expected {SCHEMA_VERSION}"
        )


def prefix_end(prefix: str) -> str | None:
    """Return the smallest key greater than every key starting with ``prefix``.

    ``None`` when there is none (the empty prefix, or one ending in the highest code point).
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _row(row: tuple[str, bytes, int, int]) -> KeyValue:
    return KeyValue(key=row[0], value=bytes(row[1]), create_revision=row[2], mod_revision=row[3])


def _revision(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_REVISION).fetchone()[0])


def _holds(conn: sqlite3.Connection, compare: Compare) -> bool:
    row = conn.execute(_MOD_REVISION, (compare.key,)).fetchone()
    current = 0 if row is None else int(row[0])
    return current == compare.mod_revision


class SqliteExchangeStore:
    """The :class:`~northpole.exchange.store.ExchangeStore` on an SQLite file.

    Args:
        path: The database file (created with its schema if missing).
        busy_timeout_ms: How long to wait for another process's write lock.
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._db: SqliteThread | None = None
        self._closed = False

    async def open(self) -> SqliteExchangeStore:
        """Open the file (creating the schema if needed); return the store itself."""
        if self._closed:
            raise Unavailable(f"exchange store {self.path} is closed")
        if self._db is None:
            path = self.path
            db = SqliteThread(
                path,
                busy_timeout_ms=self._busy_timeout_ms,
                migrate=lambda conn: migrate(conn, path=path),
                label="exchange store",
            )
            await db.start()
            self._db = db
        return self

    async def close(self) -> None:
        """Finish the calls already made, then close the connection. Idempotent."""
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            await db.stop()

    @property
    def _thread(self) -> SqliteThread:
        if self._db is None:
            raise Unavailable(f"exchange store {self.path} is not open")
        return self._db

    async def get(self, key: str) -> KeyValue | None:
        """Return ``key``, or ``None`` if it does not exist."""

        def read(conn: sqlite3.Connection) -> KeyValue | None:
            row = conn.execute(_GET, (key,)).fetchone()
            return None if row is None else _row(row)

        return await self._thread.read(read)

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """Return those of ``keys`` that exist, read in one snapshot."""
        wanted = list(dict.fromkeys(keys))

        def read(conn: sqlite3.Connection) -> dict[str, KeyValue]:
            found: dict[str, KeyValue] = {}
            for key in wanted:
                row = conn.execute(_GET, (key,)).fetchone()
                if row is not None:
                    found[key] = _row(row)
            return found

        if not wanted:
            return {}
        return await self._thread.read(read)

    async def range(self, prefix: str, *, limit: int | None = None) -> RangeResult:
        """Return the keys starting with ``prefix`` (at most ``limit``), in key order."""
        end = prefix_end(prefix)
        count = _NO_LIMIT if limit is None else max(limit, 0)

        def read(conn: sqlite3.Connection) -> RangeResult:
            if end is None:
                rows = conn.execute(_RANGE_ALL, (prefix, count)).fetchall()
            else:
                rows = conn.execute(_RANGE, (prefix, end, count)).fetchall()
            return RangeResult(kvs=[_row(r) for r in rows], revision=_revision(conn))

        return await self._thread.read(read)

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> TxnResult:
        """Apply ``operations`` under one new revision if every compare holds."""
        checks = list(compares)
        ops = list(operations)

        def write(conn: sqlite3.Connection) -> TxnResult:
            current = _revision(conn)
            if not all(_holds(conn, compare) for compare in checks):
                return TxnResult(succeeded=False, revision=current)
            if not ops:
                return TxnResult(succeeded=True, revision=current)
            revision = current + 1
            for op in ops:
                if isinstance(op, Put):
                    conn.execute(_PUT, (op.key, op.value, revision, revision))
                elif isinstance(op, Delete):
                    conn.execute(_DELETE, (op.key,))
            conn.execute(_SET_REVISION, (revision,))
            return TxnResult(succeeded=True, revision=revision)

        return await self._thread.write(write)

    async def revision(self) -> int:
        """Return the store's current revision."""
        return await self._thread.read(_revision)
