"""The SQLite task store's schema, its SQL, and the mapping of rows to tasks.

Everything :mod:`northpole.tasks.sqlite_store` stores is named here: a reader
finds the whole storage layout in this one module.

**Schema** (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`), all in :data:`SCHEMA`,
created or checked by :func:`migrate` when a store opens its file:

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

**SQL.** Every statement the store runs is a constant of this module, built
once from constant fragments; values always go through bound parameters.
Rows selected from ``tasks`` hold the Task fields in field order, then
``claimed_ms`` (index 23); :func:`task_from_row` turns one into a :class:`Task`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from northpole.core.errors import ConfigurationError
from northpole.core.sqlite import rollback
from northpole.tasks.model import Task, TaskState

__all__ = [
    "CLAIM",
    "DEPTHS",
    "DURATIONS",
    "DURATION_WINDOW",
    "EMPTY_LIST",
    "EMPTY_OBJECT",
    "EXTEND_LEASES",
    "FIRST_EXISTING",
    "FORGET_WORKERS",
    "GROUP_MEMBERS",
    "INSERT_DEP",
    "INSERT_TASK",
    "OLDEST_PENDING",
    "PENDING_DEPENDENTS",
    "RECORD_DURATION",
    "RELEASE_DEPENDENTS",
    "SAVE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_ID",
    "SELECT_IDS",
    "SELECT_KEYS",
    "STATES",
    "STATES_OF",
    "SWEEP_DEADLINE",
    "SWEEP_EXPIRE",
    "SWEEP_LEASE",
    "UPSERT_WORKER",
    "WORKERS",
    "Row",
    "migrate",
    "task_from_row",
    "to_json",
]

Row = tuple[Any, ...]

SCHEMA_VERSION = 1
#: Completions a task type's mean processing time is (roughly) taken over.
DURATION_WINDOW = 100

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

SELECT_ID = _SELECT + "WHERE id = ?"
SELECT_IDS = _SELECT + "WHERE id IN " + _IDS
SELECT_KEYS = _SELECT + "WHERE idempotency_key IN " + _IDS
FIRST_EXISTING = "SELECT id FROM tasks WHERE id IN " + _IDS + " LIMIT 1"  # noqa: S608
STATES_OF = "SELECT id, state FROM tasks WHERE id IN " + _IDS  # noqa: S608
INSERT_TASK = (
    "INSERT INTO tasks (" + _TASK_FIELDS + ", pending_deps, sched_key) "
    "VALUES (" + ", ".join("?" * 25) + ")"
)
INSERT_DEP = "INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?, ?)"
SAVE = (
    "UPDATE tasks SET state = ?, updated_ms = ?, available_ms = ?, attempts = ?, "
    "retry_count = ?, worker_id = ?, lease_until_ms = ?, fence = ?, started_ms = ?, "
    "finished_ms = ?, last_error = ?, result = ?, sched_key = ?, "
    "claimed_ms = coalesce(?, claimed_ms) WHERE id = ?"
)
EXTEND_LEASES = (
    "UPDATE tasks SET lease_until_ms = ? "  # noqa: S608
    "WHERE id IN " + _IDS + " AND worker_id = ?"
)
RELEASE_DEPENDENTS = (
    "UPDATE tasks SET pending_deps = pending_deps - 1 "
    "WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ?)"
)
PENDING_DEPENDENTS = (
    "SELECT d.depends_on, " + _T_COLS + " FROM task_deps AS d JOIN tasks AS t "  # noqa: S608
    "ON t.id = d.task_id WHERE d.depends_on IN " + _IDS + " AND t.state = 'PENDING' "
    "ORDER BY d.depends_on, d.task_id"
)
SWEEP_DEADLINE = (
    _SELECT + "WHERE state IN ('ASSIGNED', 'IN_PROGRESS') AND deadline_ms <= ? ORDER BY id"
)
SWEEP_LEASE = _SELECT + "WHERE lease_until_ms < ? ORDER BY lease_until_ms, id"
SWEEP_EXPIRE = _SELECT + "WHERE state = 'PENDING' AND deadline_ms <= ? ORDER BY id"


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


CLAIM = {typed: _claim_statements(typed) for typed in (False, True)}
UPSERT_WORKER = (
    "INSERT INTO workers (worker_id, group_name, task_types, concurrency, first_seen_ms, "
    "last_seen_ms) VALUES (:worker, :group, :types, coalesce(:concurrency, 1), :now, :now) "
    "ON CONFLICT (worker_id) DO UPDATE SET group_name = excluded.group_name, "
    "task_types = excluded.task_types, "
    "concurrency = coalesce(:concurrency, workers.concurrency), "
    "last_seen_ms = max(workers.last_seen_ms, excluded.last_seen_ms)"
)
GROUP_MEMBERS = "SELECT worker_id FROM workers WHERE group_name = ? ORDER BY worker_id"
FORGET_WORKERS = "DELETE FROM workers WHERE last_seen_ms < ?"
RECORD_DURATION = (
    "INSERT INTO task_durations (task_type, mean_ms, samples, updated_ms) "
    "VALUES (:type, :ms, 1, :now) ON CONFLICT (task_type) DO UPDATE SET "
    "mean_ms = mean_ms + (excluded.mean_ms - mean_ms) / min(samples + 1, :window), "
    "samples = samples + 1, updated_ms = excluded.updated_ms"
)
WORKERS = (
    "SELECT w.worker_id, w.group_name, w.task_types, w.concurrency, w.first_seen_ms, "
    "w.last_seen_ms, (SELECT count(*) FROM tasks AS t WHERE t.worker_id = w.worker_id) "
    "FROM workers AS w ORDER BY w.worker_id"
)
DEPTHS = (
    "SELECT task_type, priority, partition, state, count(*) FROM tasks "
    "GROUP BY task_type, priority, partition, state"
)
OLDEST_PENDING = (
    "SELECT task_type, min(available_ms) FROM tasks WHERE state = 'PENDING' GROUP BY task_type"
)
DURATIONS = "SELECT task_type, mean_ms FROM task_durations ORDER BY task_type"

# -- rows <-> tasks ----------------------------------------------------------------------

#: ``tasks.state`` text -> TaskState.
STATES = {state.value: state for state in TaskState}
#: How ``tasks.dependencies`` and ``tasks.metadata`` store "none".
EMPTY_LIST = "[]"
EMPTY_OBJECT = "{}"


def to_json(value: object) -> str:
    """Return ``value`` as JSON text (for JSON columns and JSON array parameters)."""
    return orjson.dumps(value).decode()


def _deps_of(text: str) -> tuple[int, ...]:
    return () if text == EMPTY_LIST else tuple(orjson.loads(text))


def _meta_of(text: str) -> dict[str, str]:
    return {} if text == EMPTY_OBJECT else dict(orjson.loads(text))


def task_from_row(row: Row) -> Task:
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
        STATES[row[10]],
        *row[11:23],
    )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, or check the version of an existing one.

    For :class:`~northpole.core.sqlite.SqliteThread`'s ``migrate`` (bind ``path``).

    Raises:
        ConfigurationError: The file has a newer schema than this northpole knows.
    """
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
            rollback(conn)
            raise
