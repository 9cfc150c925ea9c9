"""One SQLite connection on one dedicated thread, with group commit.

An adapter that keeps its state in an SQLite file (the embedded edition) hands
its queries to a :class:`SqliteThread` as plain functions of the connection::

    db = SqliteThread(path, busy_timeout_ms=10_000, migrate=create_schema, label="task store")
    await db.start()                       # opens the file, runs ``migrate``
    rows = await db.read(lambda conn: conn.execute(sql).fetchall())
    await db.write(lambda conn: conn.execute(insert, params))
    await db.stop()                        # finishes the calls already made, closes

**One connection, one thread.** The connection lives on one dedicated thread
and is never touched by any other; the event loop never blocks on SQLite, and
calls run one at a time in arrival order (an event loop awaits a future that
the thread settles through ``call_soon_threadsafe``). The thread is a daemon:
one never stopped does not keep the interpreter alive.

**Reads** run in a deferred ``BEGIN ... COMMIT``: one consistent snapshot, and
(in WAL mode) no lock that would hold up writers, here or in other processes.

**Writes, group commit.** Every write runs in its own savepoint inside a
``BEGIN IMMEDIATE`` transaction, so it stays all-or-nothing: an exception from
it (other than a driver error) rolls back just that call and is raised to its
caller. Writes that queue up while the thread is busy (up to 512) share that one
transaction and so one fsync, and each returns only after its ``COMMIT``.
Without this the fsync of ``synchronous=FULL`` (about 0.4 ms on a cloud disk)
would cap an adapter at a couple of thousand writes a second. A driver error
(``sqlite3.Error``) loses the whole transaction: every call of the group gets
it, and none of them was stored.

**Durability and other processes.** :func:`connect` switches the file to WAL
with ``synchronous=FULL``: the WAL is fsynced at every commit, so a write that
returned survives ``kill -9`` of the process and a power cut of the host. Other
processes may open the same file: SQLite's write lock and ``busy_timeout``
serialise them with this one.

**Errors.** Driver errors surface as :class:`Unavailable` (or :class:`Conflict`
for constraint violations), raised from the ``sqlite3`` exception, with the
``label`` and path in the message; a file that cannot use WAL raises
:class:`ConfigurationError`. A call whose awaiting coroutine is cancelled still
runs (and, if a write, commits); its result is dropped.

**Schema.** The adapter owns its schema: ``migrate`` runs on the new connection
before any call, to create the schema or check its version.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from northpole.core.errors import ConfigurationError, Conflict, NorthpoleError, Unavailable

__all__ = ["SqliteThread", "connect", "rollback"]

_T = TypeVar("_T")

#: Most writes that share one transaction.
_MAX_GROUP = 512


@dataclass(slots=True)
class _Job(Generic[_T]):
    """A call for the database thread: ``kind`` is ``open``, ``read``, ``write`` or ``stop``."""

    fn: Callable[[sqlite3.Connection], _T]
    kind: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[_T]


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _deliver(jobs: Sequence[_Job[Any]], outcomes: Sequence[tuple[bool, Any]]) -> None:
    """Hand results back, waking each caller's event loop once for the lot."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for job, (ok, value) in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, ok, value))
    for loop, results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _no_op(conn: sqlite3.Connection) -> None:
    return None


class SqliteThread:
    """One thread that owns the connection and runs calls in order, grouping writes.

    Args:
        path: The database file (created if missing).
        busy_timeout_ms: How long to wait for another process's write lock.
        migrate: Run on the new connection before any call (create or check the
            schema); its exceptions fail :meth:`start`.
        label: What the file is, for error messages (``"<label> <path>: ..."``).
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        label: str = "database",
    ) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._migrate = migrate
        self._label = label
        self._queue: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()

    async def start(self) -> None:
        """Start the thread and wait until it has opened the database."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._main,
            args=(_Job(_no_op, "open", loop, opened),),
            name=f"northpole-sqlite:{self._path.name}",
            daemon=True,  # a thread never stopped must not keep the interpreter alive
        )
        thread.start()
        await opened

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in a read transaction (one snapshot); return its result."""
        return await self._enqueue(fn, "read")

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in its own savepoint of a group transaction; return after COMMIT."""
        return await self._enqueue(fn, "write")

    async def stop(self) -> None:
        """Finish the calls already made, then close the connection and end the thread."""
        await self._enqueue(_no_op, "stop")

    def _enqueue(self, fn: Callable[[sqlite3.Connection], _T], kind: str) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Job(fn, kind, loop, future))
        return future

    def _error(self, exc: sqlite3.Error) -> NorthpoleError:
        """Our error for a driver error, raised from it."""
        error: NorthpoleError
        if isinstance(exc, sqlite3.IntegrityError):
            error = Conflict(f"{self._label} {self._path}: {exc}")
        else:
            error = Unavailable(f"{self._label} {self._path}: {exc}", retry_after_s=1.0)
        error.__cause__ = exc
        return error

    def _main(self, opening: _Job[None]) -> None:
        try:
            conn = connect(
                self._path,
                busy_timeout_ms=self._busy_timeout_ms,
                migrate=self._migrate,
                label=self._label,
            )
        except sqlite3.Error as exc:
            _deliver([opening], [(False, self._error(exc))])
            return
        except Exception as exc:
            _deliver([opening], [(False, exc)])
            return
        _deliver([opening], [(True, None)])
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        held: deque[_Job[Any]] = deque()
        while True:
            job = held.popleft() if held else self._queue.get()
            if job.kind == "stop":
                conn.close()
                _deliver([job], [(True, None)])
                return
            if job.kind == "read":
                self._run_read(conn, job)
                continue
            group = [job]
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.kind != "write":
                    held.append(nxt)
                    break
                group.append(nxt)
            self._run_group(conn, group)

    def _run_read(self, conn: sqlite3.Connection, job: _Job[Any]) -> None:
        """Run a read in a deferred transaction: one snapshot, no lock on writers (WAL)."""
        try:
            conn.execute("BEGIN")
            try:
                value = job.fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            _deliver([job], [(False, self._error(exc))])
        except Exception as exc:
            _deliver([job], [(False, exc)])
        else:
            _deliver([job], [(True, value)])

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job[Any]]) -> None:
        """Run writes in one transaction, each in its own savepoint; answer after COMMIT."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                outcomes.append(_run_savepoint(conn, job))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A driver error loses the whole transaction: no call of the group was stored.
            rollback(conn)
            error = self._error(exc)
            _deliver(group, [(False, error)] * len(group))
            return
        _deliver(group, outcomes)


def _run_savepoint(conn: sqlite3.Connection, job: _Job[Any]) -> tuple[bool, Any]:
    """Run one job in its own savepoint; a northpole error rolls back just that job."""
    conn.execute("SAVEPOINT job")
    try:
        value = job.fn(conn)
    except sqlite3.Error:
        raise
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return False, exc
    conn.execute("RELEASE job")
    return True, value


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any; an error doing so is ignored."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # nothing more to undo
            pass


def connect(
    path: Path,
    *,
    busy_timeout_ms: int,
    migrate: Callable[[sqlite3.Connection], None] | None = None,
    label: str = "database",
) -> sqlite3.Connection:
    """Open the file in autocommit mode, switch to WAL + synchronous=FULL, then migrate.

    Args:
        path: The database file (created if missing).
        busy_timeout_ms: How long to wait for another process's write lock.
        migrate: Run on the connection last (create or check the schema).
        label: What the file is, for error messages.

    Returns:
        The connection; closed again if any step (``migrate`` included) raised.

    Raises:
        ConfigurationError: The file cannot use the WAL journal.
        sqlite3.Error: The driver failed.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigurationError(f"{label} {path}: cannot use WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if migrate is not None:
            migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn
