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

**One thread, group commit.** The store runs every call on a
:class:`~northpole.core.sqlite.SqliteThread` (see :mod:`northpole.core.sqlite`):
the connection lives on one dedicated thread, the event loop never blocks on
SQLite, and calls are serialised in arrival order. Every mutating call is its
own savepoint inside a ``BEGIN IMMEDIATE`` transaction, so it is all-or-nothing
(an exception rolls back just that call). Mutating calls that queue up while
the thread is busy share one transaction and so one fsync ("group commit");
each of them returns only after that ``COMMIT``. Other processes
(``northpole worker``) open the same file: SQLite's write lock and
``busy_timeout`` serialise them with this one. Driver errors surface as
:class:`Unavailable` (or :class:`Conflict` for constraint violations), raised
from the ``sqlite3`` exception. A call whose awaiting coroutine is cancelled
still runs and commits (a claim cancelled that way is reclaimed at lease expiry).

**Schema**: the tables, indexes, every SQL statement and the mapping of rows to
tasks are in :mod:`northpole.tasks.sqlite_schema`.

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
ASSIGNED (whose ``started_ms`` equals ``finished_ms``). It is a running mean over
about the last :data:`DURATION_WINDOW` completions of a type.

**Redrive** puts one FAILED task back to PENDING. Its dependents failed by the
cascade stay FAILED (re-drive them too, after it). A task re-driven while one of
its dependencies is still FAILED or EXPIRED fails again at once
(``dependency_failed``) rather than wait forever.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import random
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson

from northpole.core.errors import Conflict, InvalidInput, Unavailable
from northpole.core.sqlite import SqliteThread
from northpole.tasks import transitions
from northpole.tasks.batch import admit, split_twins
from northpole.tasks.model import FAILED_ENDS, Reason, Task, TaskEvent, TaskState
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import assign_partitions, find_cycle, schedule_key, steal_order
from northpole.tasks.sqlite_schema import (
    CLAIM,
    DEPTHS,
    DURATION_WINDOW,
    DURATIONS,
    EMPTY_LIST,
    EMPTY_OBJECT,
    EXTEND_LEASES,
    FIRST_EXISTING,
    FORGET_WORKERS,
    GROUP_MEMBERS,
    INSERT_DEP,
    INSERT_TASK,
    OLDEST_PENDING,
    PENDING_DEPENDENTS,
    RECORD_DURATION,
    RELEASE_DEPENDENTS,
    SAVE,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_ID,
    SELECT_IDS,
    SELECT_KEYS,
    STATES,
    STATES_OF,
    SWEEP_DEADLINE,
    SWEEP_EXPIRE,
    SWEEP_LEASE,
    UPSERT_WORKER,
    WORKERS,
    Row,
    migrate,
    task_from_row,
    to_json,
)
from northpole.tasks.store import (
    Claim,
    CompleteOutcome,
    CompleteRequest,
    DependencyCycle,
    DepthRow,
    Heartbeat,
    HeartbeatAnswer,
    QueueStats,
    TaskNotFound,
    UnknownDependency,
    WorkerInfo,
)

# SCHEMA, SCHEMA_VERSION and DURATION_WINDOW live in sqlite_schema; still importable from here.
__all__ = ["DURATION_WINDOW", "SCHEMA", "SCHEMA_VERSION", "SqliteTaskStore"]

S = TaskState
_T = TypeVar("_T")

#: A worker owning more partitions than this walks the global claim index instead.
_MAX_PROBES = 64
#: How long counts of claimable tasks per partition rank partitions for stealing.
_DEPTH_TTL_MS = 1_000


# ---------------------------------------------------------------------------------------
# Storage helpers, run on the database thread


def _load(conn: sqlite3.Connection, task_id: int) -> tuple[Task, int | None]:
    row = conn.execute(SELECT_ID, (task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return task_from_row(row), row[23]


def _load_many(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Task]:
    rows = conn.execute(SELECT_IDS, (to_json(list(ids)),))
    return {row[0]: task_from_row(row) for row in rows}


def _release_dependents(conn: sqlite3.Connection, task_id: int) -> None:
    conn.execute(RELEASE_DEPENDENTS, (task_id,))


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
        UPSERT_WORKER,
        {
            "worker": worker_id,
            "group": group,
            "types": to_json(sorted(task_types)),
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
    members = conn.execute(GROUP_MEMBERS, (group,))
    return list(_partition_map(partitions, tuple(r[0] for r in members)).get(worker_id, ()))


def _stats(conn: sqlite3.Connection) -> QueueStats:
    depths = [
        DepthRow(row[0], row[1], row[2], STATES[row[3]], row[4]) for row in conn.execute(DEPTHS)
    ]
    oldest = conn.execute(OLDEST_PENDING)
    recent = conn.execute(DURATIONS)
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
        self._db: SqliteThread | None = None
        self._closed = False
        self._depths = _DepthCache()  # used on the database thread only

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> SqliteTaskStore:
        """Open the file (creating the schema if needed); return the store itself."""
        if self._closed:
            raise Unavailable(f"task store {self.path} is closed")
        if self._db is None:
            db = SqliteThread(
                self.path,
                busy_timeout_ms=self._busy_timeout_ms,
                migrate=functools.partial(migrate, path=self.path),
                label="task store",
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

    async def __aenter__(self) -> SqliteTaskStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _thread(self) -> SqliteThread:
        if self._db is None:
            state = "closed" if self._closed else "not open (use `async with` or `open()`)"
            raise Unavailable(f"task store {self.path} is {state}")
        return self._db

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread().write(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread().read(fn)

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
        return await self._write(
            lambda conn: self._complete(conn, task_id, worker_id, fence, result, now_ms)
        )

    async def complete_many(
        self, items: Sequence[CompleteRequest], *, now_ms: int
    ) -> list[CompleteOutcome]:
        """Record many successes in one transaction; per item, its events or its error.

        An item refused (no such task, a stale fence) is refused before it writes
        anything, so the others of the call still commit.
        """

        def run(conn: sqlite3.Connection) -> list[CompleteOutcome]:
            out: list[CompleteOutcome] = []
            for item in items:
                try:
                    out.append(
                        self._complete(
                            conn, item.task_id, item.worker_id, item.fence, item.result, now_ms
                        )
                    )
                except (TaskNotFound, transitions.StaleFence) as exc:
                    out.append(exc)
            return out

        return await self._write(run)

    def _complete(
        self,
        conn: sqlite3.Connection,
        task_id: int,
        worker_id: str,
        fence: int,
        result: str | None,
        now_ms: int,
    ) -> list[TaskEvent]:
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
                RECORD_DURATION,
                {
                    "type": task.task_type,
                    "ms": max(0, now_ms - began),
                    "now": now_ms,
                    "window": DURATION_WINDOW,
                },
            )
        return [event for _, event in steps]

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
                d for d, t in _load_many(conn, new.dependencies).items() if t.state in FAILED_ENDS
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

    async def wait_for_work(
        self, after: int, timeout_s: float, partitions: Collection[int] | None = None
    ) -> int:
        """Wait out ``timeout_s`` (SQLite tells nobody about other processes' commits; the
        task service wakes its own claims on its own changes); the count stays 0."""
        if after >= 0 and timeout_s > 0:
            await asyncio.sleep(timeout_s)
        return 0

    async def workers(self, *, now_ms: int) -> list[WorkerInfo]:
        """Return the workers seen and not yet forgotten."""

        def run(conn: sqlite3.Connection) -> list[WorkerInfo]:
            return [
                WorkerInfo(row[0], row[1], frozenset(orjson.loads(row[2])), *row[3:7])
                for row in conn.execute(WORKERS)
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
            conn.execute(SAVE, rows[0])
        elif rows:
            conn.executemany(SAVE, rows)

    def _cascade(
        self, conn: sqlite3.Connection, roots: Iterable[Task], now_ms: int
    ) -> list[TaskEvent]:
        """Fail the PENDING dependents of ``roots`` that ended FAILED or EXPIRED, transitively."""
        events: list[TaskEvent] = []
        frontier = [t.id for t in roots if t.state in FAILED_ENDS]
        while frontier:
            failed: dict[int, Task] = {}
            for row in conn.execute(PENDING_DEPENDENTS, (to_json(frontier),)).fetchall():
                task = task_from_row(row[1:])
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
        twins = split_twins(batch, _stored_by_key(conn, batch))
        new, twin_of, stored_twins = twins.new, twins.twin_of, twins.stored
        if not new:
            return [stored_twins[twin_of[t.id]] for t in batch], []
        new_ids = {t.id for t in new}
        states = _dependency_states(conn, new, new_ids)
        cycle = find_cycle({t.id: t.dependencies for t in new if t.dependencies})
        if cycle is not None:
            raise DependencyCycle(cycle)
        clash = conn.execute(FIRST_EXISTING, (to_json(sorted(new_ids)),)).fetchone()
        if clash is not None:
            raise Conflict(f"task {clash[0]} already exists", field="id")
        final, events = admit(new, new_ids, states, now_ms)
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
        rows: list[Row] = []
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
                    to_json(deps) if deps else EMPTY_LIST,
                    t.max_retries,
                    t.deadline_ms,
                    to_json(t.metadata) if t.metadata else EMPTY_OBJECT,
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
        conn.executemany(INSERT_TASK, rows)
        if edges:
            conn.executemany(INSERT_DEP, edges)

    def _claim(
        self, conn: sqlite3.Connection, claim: Claim, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        _upsert_worker(conn, claim.worker_id, claim.group, claim.task_types, None, now_ms)
        own = _own_partitions(conn, self.partitions, claim.group, claim.worker_id)
        if claim.limit <= 0:
            return [], []
        params: dict[str, Any] = {
            "now": now_ms,
            "types": to_json(sorted(claim.task_types)),
            "own": to_json(own),
            "limit": claim.limit,
        }
        sql = CLAIM[bool(claim.task_types)]
        picked = _pick_own(conn, sql, params, own, self.partitions)
        if len(picked) < claim.limit and len(own) < self.partitions:
            depths = self._depths.get(conn, sql, params, claim.task_types, own, now_ms)
            picked += _steal(conn, sql, params, own, depths, claim.limit - len(picked))
        found = _load_many(conn, [task_id for _, task_id in picked])
        claimed: list[Task] = []
        events: list[TaskEvent] = []
        for _, task_id in picked:
            overdue = found[task_id].deadline_ms
            if overdue is not None and overdue <= now_ms:
                continue  # past its deadline: the next sweep expires it (with its cascade)
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
                EXTEND_LEASES,
                (now_ms + beat.lease_ms, to_json(sorted(held)), beat.worker_id),
            )
        cancel = tuple(dict.fromkeys(i for i, _ in beat.holding if i not in held))
        return HeartbeatAnswer(cancel=cancel, partitions=tuple(own), events=events)

    def _sweep(self, conn: sqlite3.Connection, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        ended: list[Task] = []

        def apply(sql: str, step: Callable[[Task], tuple[Task, TaskEvent]]) -> None:
            changed: list[Task] = []
            for row in conn.execute(sql, (now_ms,)).fetchall():
                new, event = step(task_from_row(row))
                changed.append(new)
                events.append(event)
            self._save(conn, changed)
            ended.extend(changed)

        apply(
            SWEEP_DEADLINE,
            lambda t: transitions.fail_final(
                t, reason=Reason.DEADLINE_EXCEEDED, message="", now_ms=now_ms
            ),
        )
        apply(
            SWEEP_LEASE,
            lambda t: transitions.fail_attempt(
                t,
                reason=Reason.LEASE_EXPIRED,
                message=f"worker {t.worker_id} let its lease run out",
                now_ms=now_ms,
                retry_delay_ms=self._backoff(t),
            ),
        )
        apply(
            SWEEP_EXPIRE,
            lambda t: transitions.expire(t, now_ms=now_ms),
        )
        events.extend(self._cascade(conn, ended, now_ms))
        conn.execute(FORGET_WORKERS, (now_ms - worker_ttl_ms,))
        return events


def _pick_own(
    conn: sqlite3.Connection,
    sql: dict[str, str],
    params: dict[str, Any],
    own: list[int],
    partitions: int,
) -> list[Row]:
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
    heads: list[Row] = []
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
) -> list[Row]:
    """Return ``(sched_key, id)`` of up to ``wanted`` tasks of other partitions, deepest first."""
    picked: list[Row] = []
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


def _dependency_states(
    conn: sqlite3.Connection, new: list[Task], new_ids: set[int]
) -> dict[int, TaskState]:
    """Return the state of every stored dependency; raise UnknownDependency for missing ones."""
    outside = {d for t in new for d in t.dependencies if d not in new_ids}
    if not outside:
        return {}
    rows = conn.execute(STATES_OF, (to_json(list(outside)),))
    states = {row[0]: STATES[row[1]] for row in rows}
    if len(states) < len(outside):
        for task in new:
            for dependency in task.dependencies:
                if dependency not in new_ids and dependency not in states:
                    raise UnknownDependency(task.id, dependency)
    return states


def _stored_by_key(conn: sqlite3.Connection, batch: list[Task]) -> dict[str, Task]:
    """The stored tasks holding an idempotency key of ``batch``, by key."""
    keys = [t.idempotency_key for t in batch if t.idempotency_key is not None]
    if not keys:
        return {}
    return {row[8]: task_from_row(row) for row in conn.execute(SELECT_KEYS, (to_json(keys),))}
