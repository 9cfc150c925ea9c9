"""The embedded edition's task store: one SQLite file, shared by the processes of one host.

Lifecycle (an async context manager, or ``open`` / ``close`` by hand)::

    async with SqliteTaskStore(path, partitions=16, aging_ms=1_000, policy=policy) as store:
        tasks, events = await store.submit(batch, now_ms=clock.now_ms())

    store = await SqliteTaskStore(path, ...).open()
    ...
    await store.close()

Calling a method before ``open`` or after ``close`` raises :class:`Unavailable`.

**Durability.** WAL journal with ``synchronous=FULL``: the WAL is fsynced at
every commit, and a method returns only after its commit, so a ``submit`` that
returned survives ``kill -9`` of the process and a power cut of the host.

**One thread, group commit.** The connection lives on one dedicated thread; the
event loop never blocks on SQLite, and calls are serialised in arrival order.
Every mutating call is its own savepoint inside a ``BEGIN IMMEDIATE``
transaction, so it is all-or-nothing (an exception rolls back just that call).
Mutating calls that queue up while the thread is busy share one transaction
and so one fsync ("group commit"); each of them returns only after that
``COMMIT``. Without this, the fsync of ``synchronous=FULL`` (about 0.4 ms on a
cloud disk) would cap a store at a couple of thousand completions a second.
Other processes (``northpole worker``) open the same file: SQLite's write lock
and ``busy_timeout`` serialise them with this one. Driver errors surface as
:class:`Unavailable` (or :class:`Conflict` for constraint violations), raised
from the ``sqlite3`` exception. A call whose awaiting coroutine is cancelled
still runs and commits (a claim cancelled that way is reclaimed at lease expiry).

**Schema** (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`), all in :data:`SCHEMA`:

* ``tasks``: one column per :class:`Task` field (``dependencies`` and
  ``metadata`` as JSON text), plus ``pending_deps`` (dependencies not yet
  COMPLETED), ``sched_key`` (``scheduler.schedule_key``, rewritten whenever
  ``available_ms`` changes) and ``claimed_ms`` (when the running attempt was
  claimed). Partial indexes keep the claimable tasks (PENDING, no pending
  dependency) in ``sched_key`` order, globally and per partition, plus
  indexes for idempotency keys (unique), deadlines, leases, holders and
  per-type depth counts.
* ``task_deps(task_id, depends_on)``: the dependency edges, keyed by
  ``depends_on`` to find dependents.
* ``workers``: who claimed or heartbeated, and when last.
* ``task_durations``: per type, a running mean of processing time over about
  the last :data:`DURATION_WINDOW` completions (exact mean before that).

**Claim** (one transaction). The claiming worker is recorded as seen; its
group's members are the ``workers`` rows of that group (``sweep`` forgets silent
ones), and its partitions are ``scheduler.assign_partitions`` over them. The
claimable ``(sched_key, id)`` pairs of its partitions come from the covering
partial indexes in key order: one ``SELECT ... ORDER BY sched_key LIMIT n`` when
it owns every partition (or very many), else the head of each partition it
owns, merged, so the cost never grows with the depth of the queue. If that
gives fewer than ``limit``, it steals from the other partitions in
``scheduler.steal_order``, deepest first (depths counted at most once a second;
see :class:`_DepthCache`). The tasks chosen are read in one ``SELECT``, go
through ``transitions.assign`` and are written back with one ``executemany``.
Tasks with equal keys come in no particular order.

**Processing time** (``QueueStats.recent_processing_s``) runs from the start a
heartbeat reported, or from the claim when the task was completed straight from
ASSIGNED (whose ``started_ms`` equals ``finished_ms``).

**Redrive** puts one FAILED task back to PENDING. Its dependents failed by the
cascade stay FAILED (re-drive them too, after it). A task re-driven while one of
its dependencies is still FAILED or EXPIRED fails again at once
(``dependency_failed``) rather than wait forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import queue
import random
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import orjson

from northpole.core.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NorthpoleError,
    Unavailable,
)
from northpole.tasks import transitions
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import assign_partitions, find_cycle, schedule_key, steal_order
from northpole.tasks.store import (
    Claim,
    DependencyCycle,
    DepthRow,
    Heartbeat,
    HeartbeatAnswer,
    QueueStats,
    TaskNotFound,
    UnknownDependency,
    WorkerInfo,
)

__all__ = ["DURATION_WINDOW", "SCHEMA", "SCHEMA_VERSION", "SqliteTaskStore"]

S = TaskState
_T = TypeVar("_T")
_Row = tuple[Any, ...]

SCHEMA_VERSION = 1
#: Completions a task type's mean processing time is (roughly) taken over.
DURATION_WINDOW = 100
#: Most mutating calls that share one transaction.
_MAX_GROUP = 512
#: A worker owning more partitions than this walks the global claim index instead.
_MAX_PROBES = 64
#: How long counts of claimable tasks per partition rank partitions for stealing.
_DEPTH_TTL_MS = 1_000
_FAILED_ENDS = frozenset({S.FAILED, S.EXPIRED})

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id              INTEGER PRIMARY KEY,
    gift_id         INTEGER NOT NULL,
    task_type       TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    dependencies    TEXT    NOT NULL,  -- JSON array, as submitted
    max_retries     INTEGER NOT NULL,
    deadline_ms     INTEGER,
    metadata        TEXT    NOT NULL,  -- JSON object
    idempotency_key TEXT,
    partition       INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    available_ms    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    retry_count     INTEGER NOT NULL,
    worker_id       TEXT,              -- set exactly while running
    lease_until_ms  INTEGER,           -- set exactly while running
    fence           INTEGER NOT NULL,
    started_ms      INTEGER,
    finished_ms     INTEGER,
    last_error      TEXT,
    result          TEXT,
    pending_deps    INTEGER NOT NULL,  -- dependencies not yet COMPLETED
    sched_key       INTEGER NOT NULL,  -- schedule_key(priority, available_ms, aging_ms)
    claimed_ms      INTEGER            -- when the running attempt was claimed
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency
    ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claimable tasks (but for available_ms), in claim order, globally and per
-- partition. Covering: claim filters read no table row (the constant state and
-- pending_deps columns make SQLite see that).
CREATE INDEX IF NOT EXISTS tasks_ready
    ON tasks (sched_key, partition, available_ms, task_type, state, pending_deps)
    WHERE state = 'PENDING' AND pending_deps = 0;
CREATE INDEX IF NOT EXISTS tasks_ready_partition
    ON tasks (partition, sched_key, available_ms, task_type, state, pending_deps)
    WHERE state = 'PENDING' AND pending_deps = 0;
CREATE INDEX IF NOT EXISTS tasks_type
    ON tasks (task_type, priority, partition, state, available_ms);
CREATE INDEX IF NOT EXISTS tasks_deadline
    ON tasks (state, deadline_ms) WHERE deadline_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_lease
    ON tasks (lease_until_ms) WHERE lease_until_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_worker
    ON tasks (worker_id) WHERE worker_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_deps (
    task_id    INTEGER NOT NULL,
    depends_on INTEGER NOT NULL,
    PRIMARY KEY (depends_on, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    worker_id     TEXT    PRIMARY KEY,
    group_name    TEXT    NOT NULL,
    task_types    TEXT    NOT NULL,    -- JSON array, sorted; empty means every type
    concurrency   INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_group ON workers (group_name);
CREATE TABLE IF NOT EXISTS task_durations (
    task_type  TEXT    PRIMARY KEY,
    mean_ms    REAL    NOT NULL,
    samples    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""

# -- SQL ----------------------------------------------------------------------------------
# Every statement is built here, once, from the constant fragments below; values always go
# through bound parameters, never into the text (hence the S608 exemptions).

# The tasks columns that make a Task, in Task field order; then claimed_ms.
_TASK_FIELDS = (
    "id, gift_id, task_type, priority, dependencies, max_retries, deadline_ms, metadata, "
    "idempotency_key, partition, state, created_ms, updated_ms, available_ms, attempts, "
    "retry_count, worker_id, lease_until_ms, fence, started_ms, finished_ms, last_error, result"
)
_COLS = _TASK_FIELDS + ", claimed_ms"
_T_COLS = ", ".join(f"t.{name.strip()}" for name in _COLS.split(","))
_SELECT = "SELECT " + _COLS + " FROM tasks "  # noqa: S608
_IDS = "(SELECT value FROM json_each(?))"  # a JSON array parameter: no variable limit

_SELECT_ID = _SELECT + "WHERE id = ?"
_SELECT_IDS = _SELECT + "WHERE id IN " + _IDS
_SELECT_KEYS = _SELECT + "WHERE idempotency_key IN " + _IDS
_FIRST_EXISTING = "SELECT id FROM tasks WHERE id IN " + _IDS + " LIMIT 1"  # noqa: S608
_STATES_OF = "SELECT id, state FROM tasks WHERE id IN " + _IDS  # noqa: S608
_INSERT_TASK = (
    "INSERT INTO tasks (" + _TASK_FIELDS + ", pending_deps, sched_key) "
    "VALUES (" + ", ".join("?" * 25) + ")"
)
_INSERT_DEP = "INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?, ?)"
_SAVE = (
    "UPDATE tasks SET state = ?, updated_ms = ?, available_ms = ?, attempts = ?, "
    "retry_count = ?, worker_id = ?, lease_until_ms = ?, fence = ?, started_ms = ?, "
    "finished_ms = ?, last_error = ?, result = ?, sched_key = ?, "
    "claimed_ms = coalesce(?, claimed_ms) WHERE id = ?"
)
_EXTEND_LEASES = (
    "UPDATE tasks SET lease_until_ms = ? "  # noqa: S608
    "WHERE id IN " + _IDS + " AND worker_id = ?"
)
_RELEASE_DEPENDENTS = (
    "UPDATE tasks SET pending_deps = pending_deps - 1 "
    "WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ?)"
)
_PENDING_DEPENDENTS = (
    "SELECT d.depends_on, " + _T_COLS + " FROM task_deps AS d JOIN tasks AS t "  # noqa: S608
    "ON t.id = d.task_id WHERE d.depends_on IN " + _IDS + " AND t.state = 'PENDING' "
    "ORDER BY d.depends_on, d.task_id"
)
_SWEEP_DEADLINE = (
    _SELECT + "WHERE state IN ('ASSIGNED', 'IN_PROGRESS') AND deadline_ms <= ? ORDER BY id"
)
_SWEEP_LEASE = _SELECT + "WHERE lease_until_ms < ? ORDER BY lease_until_ms, id"
_SWEEP_EXPIRE = _SELECT + "WHERE state = 'PENDING' AND deadline_ms <= ? ORDER BY id"


def _claim_statements(typed: bool) -> dict[str, str]:
    """Return the claim queries, with or without a task type filter.

    Each returns ``(sched_key, id)`` of claimable tasks, read from the covering
    partial indexes of claimable tasks (which the ``state`` and ``pending_deps``
    terms select). The unary ``+`` keeps SQLite from serving ``task_type IN``
    from ``tasks_type`` and then sorting every task of those types.
    """
    ready = "WHERE state = 'PENDING' AND pending_deps = 0 AND available_ms <= :now"
    if typed:
        ready += " AND +task_type IN (SELECT value FROM json_each(:types))"
    head = "SELECT sched_key, id FROM tasks " + ready  # noqa: S608
    in_key_order = " ORDER BY sched_key LIMIT :limit"
    in_own = " AND +partition IN (SELECT value FROM json_each(:own))"
    return {
        "all": head + in_key_order,
        "own": head + in_own + in_key_order,
        "one": head + " AND partition = :partition" + in_key_order,
        "depths": "SELECT partition, count(*) FROM tasks " + ready + " GROUP BY partition",  # noqa: S608
    }


_CLAIM = {typed: _claim_statements(typed) for typed in (False, True)}
_UPSERT_WORKER = (
    "INSERT INTO workers (worker_id, group_name, task_types, concurrency, first_seen_ms, "
    "last_seen_ms) VALUES (:worker, :group, :types, coalesce(:concurrency, 1), :now, :now) "
    "ON CONFLICT (worker_id) DO UPDATE SET group_name = excluded.group_name, "
    "task_types = excluded.task_types, "
    "concurrency = coalesce(:concurrency, workers.concurrency), "
    "last_seen_ms = max(workers.last_seen_ms, excluded.last_seen_ms)"
)
_GROUP_MEMBERS = "SELECT worker_id FROM workers WHERE group_name = ? ORDER BY worker_id"
_FORGET_WORKERS = "DELETE FROM workers WHERE last_seen_ms < ?"
_RECORD_DURATION = (
    "INSERT INTO task_durations (task_type, mean_ms, samples, updated_ms) "
    "VALUES (:type, :ms, 1, :now) ON CONFLICT (task_type) DO UPDATE SET "
    "mean_ms = mean_ms + (excluded.mean_ms - mean_ms) / min(samples + 1, :window), "
    "samples = samples + 1, updated_ms = excluded.updated_ms"
)
_WORKERS = (
    "SELECT w.worker_id, w.group_name, w.task_types, w.concurrency, w.first_seen_ms, "
    "w.last_seen_ms, (SELECT count(*) FROM tasks AS t WHERE t.worker_id = w.worker_id) "
    "FROM workers AS w ORDER BY w.worker_id"
)
_DEPTHS = (
    "SELECT task_type, priority, partition, state, count(*) FROM tasks "
    "GROUP BY task_type, priority, partition, state"
)
_OLDEST_PENDING = (
    "SELECT task_type, min(available_ms) FROM tasks WHERE state = 'PENDING' GROUP BY task_type"
)
_DURATIONS = "SELECT task_type, mean_ms FROM task_durations ORDER BY task_type"

_STATES = {state.value: state for state in TaskState}
_EMPTY_LIST = "[]"
_EMPTY_OBJECT = "{}"


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _deps_of(text: str) -> tuple[int, ...]:
    return () if text == _EMPTY_LIST else tuple(orjson.loads(text))


def _meta_of(text: str) -> dict[str, str]:
    return {} if text == _EMPTY_OBJECT else dict(orjson.loads(text))


def _task(row: _Row) -> Task:
    """Build a Task from a row of :data:`_COLS` (in Task field order)."""
    return Task(
        row[0],
        row[1],
        row[2],
        row[3],
        _deps_of(row[4]),
        row[5],
        row[6],
        _meta_of(row[7]),
        row[8],
        row[9],
        _STATES[row[10]],
        *row[11:23],
    )


def _submitted(task: Task, now_ms: int) -> TaskEvent:
    return TaskEvent(
        task_id=task.id,
        gift_id=task.gift_id,
        task_type=task.task_type,
        old_state=None,
        new_state=task.state,
        at_ms=now_ms,
    )


def _wrap(exc: sqlite3.Error, path: Path) -> NorthpoleError:
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(f"task store {path}: {exc}")
    return Unavailable(f"task store {path}: {exc}", retry_after_s=1.0)


# ---------------------------------------------------------------------------------------
# The database thread


@dataclass(slots=True)
class _Job(Generic[_T]):
    """A call for the database thread: ``kind`` is ``read``, ``write`` or ``stop``."""

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


class _DbThread:
    """One thread that owns the connection and runs jobs in order, grouping writes."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()

    async def start(self) -> None:
        """Start the thread and wait until it has opened the database."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._main,
            args=(_Job(_no_op, "open", loop, opened),),
            name=f"northpole-sqlite:{self._path.name}",
            daemon=True,  # a store never closed must not keep the interpreter alive
        )
        thread.start()
        await opened

    async def run(self, fn: Callable[[sqlite3.Connection], _T], *, kind: str) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Job(fn, kind, loop, future))
        return await future

    def _main(self, opening: _Job[None]) -> None:
        try:
            conn = _connect(self._path, self._busy_timeout_ms)
        except sqlite3.Error as exc:
            _deliver([opening], [(False, _chain(_wrap(exc, self._path), exc))])
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
            _rollback(conn)
            _deliver([job], [(False, _chain(_wrap(exc, self._path), exc))])
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
            _rollback(conn)
            error = _chain(_wrap(exc, self._path), exc)
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


def _chain(error: NorthpoleError, cause: BaseException) -> NorthpoleError:
    error.__cause__ = cause
    return error


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # nothing more to undo
            pass


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open the file, switch to WAL + synchronous=FULL, and create or check the schema."""
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigurationError(f"task store {path}: cannot use WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"task store {path} has schema version {version}; this northpole knows "
                f"{SCHEMA_VERSION} at most"
            )
        if version < SCHEMA_VERSION:
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
                )
            except BaseException:
                _rollback(conn)
                raise
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------------------------------
# Storage helpers, run on the database thread


def _load(conn: sqlite3.Connection, task_id: int) -> tuple[Task, int | None]:
    row = conn.execute(_SELECT_ID, (task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return _task(row), row[23]


def _load_many(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Task]:
    rows = conn.execute(_SELECT_IDS, (_json(list(ids)),))
    return {row[0]: _task(row) for row in rows}


def _release_dependents(conn: sqlite3.Connection, task_id: int) -> None:
    conn.execute(_RELEASE_DEPENDENTS, (task_id,))


def _upsert_worker(
    conn: sqlite3.Connection,
    worker_id: str,
    group: str,
    task_types: frozenset[str],
    concurrency: int | None,
    now_ms: int,
) -> None:
    """Record the worker as seen now (creating it at first sight)."""
    conn.execute(
        _UPSERT_WORKER,
        {
            "worker": worker_id,
            "group": group,
            "types": _json(sorted(task_types)),
            "concurrency": concurrency,
            "now": now_ms,
        },
    )


@functools.lru_cache(maxsize=64)
def _partition_map(partitions: int, members: tuple[str, ...]) -> dict[str, list[int]]:
    return assign_partitions(partitions, members)


def _own_partitions(
    conn: sqlite3.Connection, partitions: int, group: str, worker_id: str
) -> list[int]:
    """Return the worker's rendezvous share of the partitions among its group's workers."""
    members = conn.execute(_GROUP_MEMBERS, (group,))
    return list(_partition_map(partitions, tuple(r[0] for r in members)).get(worker_id, ()))


def _stats(conn: sqlite3.Connection) -> QueueStats:
    depths = [
        DepthRow(row[0], row[1], row[2], _STATES[row[3]], row[4]) for row in conn.execute(_DEPTHS)
    ]
    oldest = conn.execute(_OLDEST_PENDING)
    recent = conn.execute(_DURATIONS)
    return QueueStats(
        depths=depths,
        oldest_pending_ms={row[0]: row[1] for row in oldest},
        recent_processing_s={row[0]: row[1] / 1000 for row in recent},
    )


class SqliteTaskStore:
    """The :class:`~northpole.tasks.store.TaskStore` on one SQLite file (see the module doc).

    Args:
        path: The database file (created with its schema if missing).
        partitions: How many partitions the group's workers share.
        aging_ms: Waiting time worth one priority level (``scheduler.schedule_key``).
        policy: Backoff of retried attempts (failures without a delay, lease expiry).
        rng: Randomness for the backoff jitter; a fresh ``random.Random`` if None.
        busy_timeout_ms: How long to wait for another process's write lock.
    """

    def __init__(
        self,
        path: Path,
        *,
        partitions: int,
        aging_ms: int,
        policy: RetryPolicy,
        rng: random.Random | None = None,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        if partitions < 1:
            raise InvalidInput("must be >= 1", field="partitions")
        self.path = Path(path)
        self.partitions = partitions
        self.aging_ms = aging_ms
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        self._busy_timeout_ms = busy_timeout_ms
        self._db: _DbThread | None = None
        self._closed = False
        self._depths = _DepthCache()  # used on the database thread only

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> SqliteTaskStore:
        """Open the file (creating the schema if needed); return the store itself."""
        if self._closed:
            raise Unavailable(f"task store {self.path} is closed")
        if self._db is None:
            db = _DbThread(self.path, self._busy_timeout_ms)
            await db.start()
            self._db = db
        return self

    async def close(self) -> None:
        """Finish the calls already made, then close the connection. Idempotent."""
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            await db.run(_no_op, kind="stop")

    async def __aenter__(self) -> SqliteTaskStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _thread(self) -> _DbThread:
        if self._db is None:
            state = "closed" if self._closed else "not open (use `async with` or `open()`)"
            raise Unavailable(f"task store {self.path} is {state}")
        return self._db

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread().run(fn, kind="write")

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread().run(fn, kind="read")

    # -- the port ---------------------------------------------------------------------------

    async def submit(
        self, tasks: Sequence[Task], *, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        """Store new PENDING tasks (all or none); return them (or the idempotent twins)."""
        batch = list(tasks)
        self._check_batch(batch)
        if not batch:
            return [], []
        return await self._write(lambda conn: self._submit(conn, batch, now_ms))

    async def get(self, task_id: int) -> Task:
        """Return a task; raise :class:`TaskNotFound`."""
        return (await self._read(lambda conn: _load(conn, task_id)))[0]

    async def claim(self, claim: Claim, *, now_ms: int) -> tuple[list[Task], list[TaskEvent]]:
        """Assign up to ``claim.limit`` claimable tasks to the worker (PENDING -> ASSIGNED)."""
        return await self._write(lambda conn: self._claim(conn, claim, now_ms))

    async def heartbeat(self, beat: Heartbeat, *, now_ms: int) -> HeartbeatAnswer:
        """Record the worker alive, mark ``started`` tasks IN_PROGRESS, extend its leases.

        Only the leases of tasks listed in ``holding`` (or ``started``) are extended:
        a task the worker does not know it holds (a claim whose answer was lost)
        runs out of lease and is reclaimed.
        """
        return await self._write(lambda conn: self._heartbeat(conn, beat, now_ms))

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None, now_ms: int
    ) -> list[TaskEvent]:
        """Record success (releases dependents)."""

        def run(conn: sqlite3.Connection) -> list[TaskEvent]:
            task, claimed_ms = _load(conn, task_id)
            steps = transitions.complete(
                task, worker_id=worker_id, fence=fence, now_ms=now_ms, result=result
            )
            done = steps[-1][0]
            self._save(conn, [done])
            _release_dependents(conn, task_id)
            began = task.started_ms if task.state is S.IN_PROGRESS else claimed_ms
            if began is not None:
                conn.execute(
                    _RECORD_DURATION,
                    {
                        "type": task.task_type,
                        "ms": max(0, now_ms - began),
                        "now": now_ms,
                        "window": DURATION_WINDOW,
                    },
                )
            return [event for _, event in steps]

        return await self._write(run)

    async def fail(
        self,
        task_id: int,
        *,
        worker_id: str,
        fence: int,
        reason: Reason,
        message: str,
        retry: bool,
        delay_ms: int | None,
        now_ms: int,
    ) -> list[TaskEvent]:
        """Record a failed attempt: retried after ``delay_ms`` (or the policy's backoff) if
        ``retry`` and retries are left, else FAILED (cascading to dependents)."""

        def run(conn: sqlite3.Connection) -> list[TaskEvent]:
            task, _ = _load(conn, task_id)
            transitions.check_holder(task, worker_id, fence)
            backoff: int | None = None
            if retry:
                backoff = delay_ms if delay_ms is not None else self._backoff(task)
            new, event = transitions.fail_attempt(
                task, reason=reason, message=message, now_ms=now_ms, retry_delay_ms=backoff
            )
            self._save(conn, [new])
            return [event, *self._cascade(conn, [new], now_ms)]

        return await self._write(run)

    async def cancel(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Fail a PENDING or running task with reason ``cancelled`` (cascading)."""

        def run(conn: sqlite3.Connection) -> list[TaskEvent]:
            task, _ = _load(conn, task_id)
            new, event = transitions.fail_final(
                task, reason=Reason.CANCELLED, message="", now_ms=now_ms
            )
            self._save(conn, [new])
            return [event, *self._cascade(conn, [new], now_ms)]

        return await self._write(run)

    async def redrive(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Put a FAILED task back to PENDING with a fresh retry budget (see the module doc)."""

        def run(conn: sqlite3.Connection) -> list[TaskEvent]:
            task, _ = _load(conn, task_id)
            new, event = transitions.redrive(task, now_ms=now_ms)
            events = [event]
            failed = [
                d for d, t in _load_many(conn, new.dependencies).items() if t.state in _FAILED_ENDS
            ]
            if failed:
                new, event = transitions.fail_final(
                    new,
                    reason=Reason.DEPENDENCY_FAILED,
                    message=f"dependency {failed[0]} failed",
                    now_ms=now_ms,
                )
                events.append(event)
            self._save(conn, [new])
            return events

        return await self._write(run)

    async def sweep(self, *, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        """Reclaim expired leases, apply deadlines, forget workers silent for ``worker_ttl_ms``."""
        return await self._write(lambda conn: self._sweep(conn, now_ms, worker_ttl_ms))

    async def stats(self, *, now_ms: int) -> QueueStats:
        """Return depths, oldest pending times and recent processing times."""
        return await self._read(_stats)

    async def workers(self, *, now_ms: int) -> list[WorkerInfo]:
        """Return the workers seen and not yet forgotten."""

        def run(conn: sqlite3.Connection) -> list[WorkerInfo]:
            return [
                WorkerInfo(row[0], row[1], frozenset(orjson.loads(row[2])), *row[3:7])
                for row in conn.execute(_WORKERS)
            ]

        return await self._read(run)

    # -- implementation (database thread) -----------------------------------------------

    def _backoff(self, task: Task) -> int:
        return self.policy.delay_ms(task.retry_count + 1, self._rng)

    def _save(
        self, conn: sqlite3.Connection, tasks: Iterable[Task], claimed_ms: int | None = None
    ) -> None:
        """Write back the mutable columns of changed tasks (and ``sched_key``)."""
        aging = self.aging_ms
        rows = [
            (
                t.state.value,
                t.updated_ms,
                t.available_ms,
                t.attempts,
                t.retry_count,
                t.worker_id,
                t.lease_until_ms,
                t.fence,
                t.started_ms,
                t.finished_ms,
                t.last_error,
                t.result,
                schedule_key(t.priority, t.available_ms, aging),
                claimed_ms,
                t.id,
            )
            for t in tasks
        ]
        if len(rows) == 1:
            conn.execute(_SAVE, rows[0])
        elif rows:
            conn.executemany(_SAVE, rows)

    def _cascade(
        self, conn: sqlite3.Connection, roots: Iterable[Task], now_ms: int
    ) -> list[TaskEvent]:
        """Fail the PENDING dependents of ``roots`` that ended FAILED or EXPIRED, transitively."""
        events: list[TaskEvent] = []
        frontier = [t.id for t in roots if t.state in _FAILED_ENDS]
        while frontier:
            failed: dict[int, Task] = {}
            for row in conn.execute(_PENDING_DEPENDENTS, (_json(frontier),)).fetchall():
                task = _task(row[1:])
                if task.id in failed:
                    continue
                new, event = transitions.fail_final(
                    task,
                    reason=Reason.DEPENDENCY_FAILED,
                    message=f"dependency {row[0]} failed",
                    now_ms=now_ms,
                )
                failed[task.id] = new
                events.append(event)
            self._save(conn, failed.values())
            frontier = list(failed)
        return events

    def _check_batch(self, batch: Sequence[Task]) -> None:
        ids: set[int] = set()
        for task in batch:
            if task.state is not S.PENDING:
                raise InvalidInput(
                    f"task {task.id} is {task.state.value}, not PENDING", field="state"
                )
            if not 0 <= task.partition < self.partitions:
                raise InvalidInput(
                    f"task {task.id} has partition {task.partition}, not in [0, {self.partitions})",
                    field="partition",
                )
            if task.id in ids:
                raise Conflict(f"task {task.id} appears twice in the batch", field="id")
            ids.add(task.id)

    def _submit(
        self, conn: sqlite3.Connection, batch: list[Task], now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        new, twin_of, stored_twins = _split_twins(conn, batch)
        if not new:
            return [stored_twins[twin_of[t.id]] for t in batch], []
        new_ids = {t.id for t in new}
        states = _dependency_states(conn, new, new_ids)
        cycle = find_cycle({t.id: t.dependencies for t in new if t.dependencies})
        if cycle is not None:
            raise DependencyCycle(cycle)
        clash = conn.execute(_FIRST_EXISTING, (_json(sorted(new_ids)),)).fetchone()
        if clash is not None:
            raise Conflict(f"task {clash[0]} already exists", field="id")
        final = {t.id: t for t in new}
        events = [_submitted(t, now_ms) for t in new]
        for task_id, dependency in _doomed(new, new_ids, states):
            failed, event = transitions.fail_final(
                final[task_id],
                reason=Reason.DEPENDENCY_FAILED,
                message=f"dependency {dependency} failed",
                now_ms=now_ms,
            )
            final[task_id] = failed
            events.append(event)
        self._insert(conn, final.values(), new_ids, states)
        out = [final.get(twin_of.get(t.id, t.id)) or stored_twins[twin_of[t.id]] for t in batch]
        return out, events

    def _insert(
        self,
        conn: sqlite3.Connection,
        tasks: Iterable[Task],
        new_ids: set[int],
        states: dict[int, TaskState],
    ) -> None:
        aging = self.aging_ms
        rows: list[_Row] = []
        edges: list[tuple[int, int]] = []
        for t in tasks:
            deps = t.dependencies
            pending = 0
            if deps:
                distinct = set(deps)
                pending = sum(1 for d in distinct if d in new_ids or states[d] is not S.COMPLETED)
                edges.extend((t.id, d) for d in distinct)
            rows.append(
                (
                    t.id,
                    t.gift_id,
                    t.task_type,
                    t.priority,
                    _json(deps) if deps else _EMPTY_LIST,
                    t.max_retries,
                    t.deadline_ms,
                    _json(t.metadata) if t.metadata else _EMPTY_OBJECT,
                    t.idempotency_key,
                    t.partition,
                    t.state.value,
                    t.created_ms,
                    t.updated_ms,
                    t.available_ms,
                    t.attempts,
                    t.retry_count,
                    t.worker_id,
                    t.lease_until_ms,
                    t.fence,
                    t.started_ms,
                    t.finished_ms,
                    t.last_error,
                    t.result,
                    pending,
                    schedule_key(t.priority, t.available_ms, aging),
                )
            )
        conn.executemany(_INSERT_TASK, rows)
        if edges:
            conn.executemany(_INSERT_DEP, edges)

    def _claim(
        self, conn: sqlite3.Connection, claim: Claim, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        _upsert_worker(conn, claim.worker_id, claim.group, claim.task_types, None, now_ms)
        own = _own_partitions(conn, self.partitions, claim.group, claim.worker_id)
        if claim.limit <= 0:
            return [], []
        params: dict[str, Any] = {
            "now": now_ms,
            "types": _json(sorted(claim.task_types)),
            "own": _json(own),
            "limit": claim.limit,
        }
        sql = _CLAIM[bool(claim.task_types)]
        picked = _pick_own(conn, sql, params, own, self.partitions)
        if len(picked) < claim.limit and len(own) < self.partitions:
            depths = self._depths.get(conn, sql, params, claim.task_types, own, now_ms)
            picked += _steal(conn, sql, params, own, depths, claim.limit - len(picked))
        found = _load_many(conn, [task_id for _, task_id in picked])
        claimed: list[Task] = []
        events: list[TaskEvent] = []
        for _, task_id in picked:
            task, event = transitions.assign(
                found[task_id], worker_id=claim.worker_id, now_ms=now_ms, lease_ms=claim.lease_ms
            )
            claimed.append(task)
            events.append(event)
        self._save(conn, claimed, claimed_ms=now_ms)
        return claimed, events

    def _heartbeat(self, conn: sqlite3.Connection, beat: Heartbeat, now_ms: int) -> HeartbeatAnswer:
        _upsert_worker(conn, beat.worker_id, beat.group, beat.task_types, beat.concurrency, now_ms)
        own = _own_partitions(conn, self.partitions, beat.group, beat.worker_id)
        shown = [*beat.holding, *beat.started]
        tasks = _load_many(conn, {task_id for task_id, _ in shown}) if shown else {}
        held = {
            task_id
            for task_id, fence in shown
            if (t := tasks.get(task_id)) is not None
            and t.state.is_running
            and t.worker_id == beat.worker_id
            and t.fence == fence
        }
        started: dict[int, Task] = {}
        events: list[TaskEvent] = []
        for task_id, fence in beat.started:
            task = tasks.get(task_id)
            if task_id in held and task_id not in started and task is not None:
                if task.state is S.ASSIGNED and task.fence == fence:
                    started[task_id], event = transitions.start(
                        task, worker_id=beat.worker_id, fence=fence, now_ms=now_ms
                    )
                    events.append(event)
        self._save(conn, started.values())
        if held:
            conn.execute(
                _EXTEND_LEASES,
                (now_ms + beat.lease_ms, _json(sorted(held)), beat.worker_id),
            )
        cancel = tuple(dict.fromkeys(i for i, _ in beat.holding if i not in held))
        return HeartbeatAnswer(cancel=cancel, partitions=tuple(own), events=events)

    def _sweep(self, conn: sqlite3.Connection, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        ended: list[Task] = []

        def apply(sql: str, step: Callable[[Task], tuple[Task, TaskEvent]]) -> None:
            changed: list[Task] = []
            for row in conn.execute(sql, (now_ms,)).fetchall():
                new, event = step(_task(row))
                changed.append(new)
                events.append(event)
            self._save(conn, changed)
            ended.extend(changed)

        apply(
            _SWEEP_DEADLINE,
            lambda t: transitions.fail_final(
                t, reason=Reason.DEADLINE_EXCEEDED, message="", now_ms=now_ms
            ),
        )
        apply(
            _SWEEP_LEASE,
            lambda t: transitions.fail_attempt(
                t,
                reason=Reason.LEASE_EXPIRED,
                message=f"worker {t.worker_id} let its lease run out",
                now_ms=now_ms,
                retry_delay_ms=self._backoff(t),
            ),
        )
        apply(
            _SWEEP_EXPIRE,
            lambda t: transitions.expire(t, now_ms=now_ms),
        )
        events.extend(self._cascade(conn, ended, now_ms))
        conn.execute(_FORGET_WORKERS, (now_ms - worker_ttl_ms,))
        return events


def _pick_own(
    conn: sqlite3.Connection,
    sql: dict[str, str],
    params: dict[str, Any],
    own: list[int],
    partitions: int,
) -> list[_Row]:
    """Return ``(sched_key, id)`` of the first claimable tasks of the worker's partitions.

    Owning every partition, one walk of ``tasks_ready`` in key order. Owning a few,
    the head of each partition (a short walk of ``tasks_ready_partition`` each), merged:
    the cost grows with the partitions owned, never with the depth of the queue.
    """
    if not own:
        return []
    if len(own) == partitions:
        return conn.execute(sql["all"], params).fetchall()
    if len(own) > _MAX_PROBES:
        return conn.execute(sql["own"], params).fetchall()
    heads: list[_Row] = []
    for partition in own:
        heads.extend(conn.execute(sql["one"], {**params, "partition": partition}).fetchall())
    return heapq.nsmallest(params["limit"], heads)


def _steal(
    conn: sqlite3.Connection,
    sql: dict[str, str],
    params: dict[str, Any],
    own: list[int],
    depths: dict[int, int],
    wanted: int,
) -> list[_Row]:
    """Return ``(sched_key, id)`` of up to ``wanted`` tasks of other partitions, deepest first."""
    picked: list[_Row] = []
    for partition in steal_order(depths, own):
        limit = wanted - len(picked)
        rows = conn.execute(sql["one"], {**params, "partition": partition, "limit": limit})
        got = rows.fetchall()
        picked.extend(got)
        depths[partition] = depths[partition] - len(got) if len(got) == limit else 0
        if len(picked) >= wanted:
            break
    return picked


class _DepthCache:
    """Claimable tasks per partition, counted at most once a second per set of task types.

    Counting walks every claimable task, so a worker stealing from a deep queue would
    pay for it at every claim. The counts only rank partitions for stealing (the claim
    query checks every task again), so a second-old count, decremented by what was
    stolen since, serves until it no longer promises enough tasks.
    """

    def __init__(self) -> None:
        self._counts: dict[frozenset[str], tuple[int, dict[int, int]]] = {}

    def get(
        self,
        conn: sqlite3.Connection,
        sql: dict[str, str],
        params: dict[str, Any],
        task_types: frozenset[str],
        own: list[int],
        now_ms: int,
    ) -> dict[int, int]:
        counted_ms, depths = self._counts.get(task_types, (now_ms - _DEPTH_TTL_MS, {}))
        fresh = counted_ms <= now_ms < counted_ms + _DEPTH_TTL_MS
        mine = set(own)
        if fresh and sum(d for p, d in depths.items() if p not in mine) >= params["limit"]:
            return depths
        depths = dict(conn.execute(sql["depths"], params).fetchall())
        if len(self._counts) >= 64:
            self._counts.clear()
        self._counts[task_types] = (now_ms, depths)
        return depths


def _split_twins(
    conn: sqlite3.Connection, batch: list[Task]
) -> tuple[list[Task], dict[int, int], dict[int, Task]]:
    """Separate new tasks from those whose idempotency key is stored or earlier in the batch.

    Returns:
        The new tasks (dependencies on twins rewritten to the twin), each twin's
        batch id -> the id it stands for, and the stored twins by id.
    """
    keys = [t.idempotency_key for t in batch if t.idempotency_key is not None]
    stored: dict[str, Task] = {}
    if keys:
        rows = conn.execute(_SELECT_KEYS, (_json(keys),))
        stored = {row[8]: _task(row) for row in rows}
    if not stored and len(set(keys)) == len(keys):
        return batch, {}, {}
    first: dict[str, int] = {key: task.id for key, task in stored.items()}
    twin_of: dict[int, int] = {}
    new: list[Task] = []
    for task in batch:
        key = task.idempotency_key
        if key is not None and key in first:
            twin_of[task.id] = first[key]
            continue
        if key is not None:
            first[key] = task.id
        new.append(task)
    if twin_of:
        new = [_rewire(t, twin_of) for t in new]
    return new, twin_of, {t.id: t for t in stored.values()}


def _rewire(task: Task, twin_of: dict[int, int]) -> Task:
    deps = tuple(twin_of.get(d, d) for d in task.dependencies)
    return task if deps == task.dependencies else dataclasses.replace(task, dependencies=deps)


def _dependency_states(
    conn: sqlite3.Connection, new: list[Task], new_ids: set[int]
) -> dict[int, TaskState]:
    """Return the state of every stored dependency; raise UnknownDependency for missing ones."""
    outside = {d for t in new for d in t.dependencies if d not in new_ids}
    if not outside:
        return {}
    rows = conn.execute(_STATES_OF, (_json(list(outside)),))
    states = {row[0]: _STATES[row[1]] for row in rows}
    if len(states) < len(outside):
        for task in new:
            for dependency in task.dependencies:
                if dependency not in new_ids and dependency not in states:
                    raise UnknownDependency(task.id, dependency)
    return states


def _doomed(
    new: list[Task], new_ids: set[int], states: dict[int, TaskState]
) -> list[tuple[int, int]]:
    """Return ``(task, failed dependency)`` for new tasks that must fail at once, in cause order."""
    if not states:
        return []
    doomed: dict[int, int] = {}
    dependents: dict[int, list[int]] = {}
    for task in new:
        for dependency in task.dependencies:
            if dependency in new_ids:
                dependents.setdefault(dependency, []).append(task.id)
            elif states[dependency] in _FAILED_ENDS:
                doomed.setdefault(task.id, dependency)
    frontier = list(doomed)
    for task_id in frontier:  # grows while we walk it: a breadth-first walk
        for dependent in dependents.get(task_id, ()):
            if dependent not in doomed:
                doomed[dependent] = task_id
                frontier.append(dependent)
    return list(doomed.items())
