"""The TaskStore port: where tasks live, and the one place transitions are applied atomically.

Every method that changes tasks applies the pure functions of
:mod:`northpole.tasks.transitions` inside one transaction of the backing store
and returns the :class:`~northpole.tasks.model.TaskEvent` of every change it
made (cascades included), in order, for the caller to publish.

Implementations: :class:`northpole.tasks.sqlite_store.SqliteTaskStore`
(embedded edition) and :class:`northpole.tasks.redis_store.RedisTaskStore`
(cluster edition, chosen by ``tasks.redis_url``). ``tests/contract/`` runs one
suite against every implementation.

Semantics every implementation keeps:

* **submit** is all-or-nothing. A task whose ``idempotency_key`` is already
  stored is not stored again: the stored task is returned in its place.
  Dependencies must name stored tasks or tasks of the same batch (else
  :class:`UnknownDependency`); cycles are rejected (:class:`DependencyCycle`).
  A task whose dependency already FAILED or EXPIRED is stored FAILED with
  reason ``dependency_failed``.
* **claim** is atomic: a task is handed to one worker at a time. Claimable
  means PENDING, ``available_ms <= now``, every dependency COMPLETED, and a
  type the worker handles. Order: ``scheduler.schedule_key`` (priority with
  aging). The worker's own partitions (rendezvous over its group's live
  workers) come first; if they have nothing, it steals from the deepest other
  partitions.
* **complete_many** applies many completions in one call (fewer round trips
  and one transaction where the store has them); each item succeeds or fails
  on its own, exactly as :meth:`complete` would, and a failed item is
  returned as its error, never raised.
* **complete / fail / start** need the holder's ``worker_id`` and ``fence``
  (else :class:`~northpole.tasks.transitions.StaleFence`), so a worker whose
  lease was taken away cannot complete: a task is COMPLETED at most once.
* Completing a task releases its dependents; a task that ends FAILED or
  EXPIRED fails its PENDING dependents with ``dependency_failed``, transitively.
* **heartbeat** extends the leases of the tasks it lists in ``holding`` or
  ``started`` only: a task whose claim answer never reached the worker is
  reclaimed when its lease runs out, even while the worker keeps beating.
* **redrive** of a task whose dependency is FAILED or EXPIRED fails it again at
  once (``dependency_failed``); dependents failed by a cascade stay FAILED.
* **submit** with an ``idempotency_key`` that repeats within one batch stores
  the first task only; a task of the batch that depends on a task replaced by
  its stored twin depends on the twin.
* **wait_for_work** returns early when tasks may have become claimable (a
  hint: a claim after it may still find nothing), never later than its timeout.
* **sweep** reclaims tasks whose lease ran out (a failed attempt, reason
  ``lease_expired``), expires PENDING tasks past their deadline and fails
  running ones past it (``deadline_exceeded``). Safe to run concurrently.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from northpole.core.errors import InvalidInput, NorthpoleError, NotFound
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState


class TaskNotFound(NotFound):
    """No task has that id."""

    code = "task_not_found"

    def __init__(self, task_id: int) -> None:
        super().__init__(f"no task with id {task_id}", field="id")
        self.task_id = task_id


class UnknownDependency(InvalidInput):
    """A dependency names no stored task and no task of the same batch."""

    def __init__(self, task_id: int, dependency: int) -> None:
        super().__init__(
            f"task {task_id} depends on unknown task {dependency}", field="dependencies"
        )


class DependencyCycle(InvalidInput):
    """Dependencies in one batch form a cycle."""

    def __init__(self, cycle: Sequence[int]) -> None:
        path = " -> ".join(str(t) for t in cycle)
        super().__init__(f"dependencies form a cycle: {path}", field="dependencies")
        self.cycle = list(cycle)


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker asking for work.

    Attributes:
        worker_id: Who asks (unique per worker process).
        group: The consumer group it belongs to.
        task_types: The types it handles; empty means every type.
        limit: The most tasks to hand over.
        lease_ms: How long the claim lasts without a heartbeat.
    """

    worker_id: str
    group: str
    task_types: frozenset[str] = frozenset()
    limit: int = 1
    lease_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class CompleteRequest:
    """One completion of a :meth:`TaskStore.complete_many` call.

    Attributes:
        task_id: The task.
        worker_id: Its holder.
        fence: The fence of the holder's assignment.
        result: What the handler returned, if anything.
    """

    task_id: int
    worker_id: str
    fence: int
    result: str | None = None


#: What :meth:`TaskStore.complete_many` answers per item: the events, or the error.
CompleteOutcome = list[TaskEvent] | NorthpoleError


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A worker's sign of life, which also extends its leases.

    Attributes:
        worker_id: Who.
        group: Its consumer group.
        task_types: The types it handles (empty: all).
        concurrency: Tasks it runs at once (for the autoscaling signal).
        started: ``(task_id, fence)`` of held tasks whose handler has begun since
            the last heartbeat (ASSIGNED -> IN_PROGRESS).
        holding: ``(task_id, fence)`` of every task it holds.
        lease_ms: The new lease length.
    """

    worker_id: str
    group: str
    task_types: frozenset[str] = frozenset()
    concurrency: int = 1
    started: tuple[tuple[int, int], ...] = ()
    holding: tuple[tuple[int, int], ...] = ()
    lease_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    """What the store tells a worker back.

    Attributes:
        cancel: Held task ids the worker no longer holds (cancelled, past their
            deadline, or reclaimed): it must stop them and not report them.
        partitions: The partitions the worker owns in its group now.
        events: State changes the heartbeat made (starts).
    """

    cancel: tuple[int, ...]
    partitions: tuple[int, ...]
    events: list[TaskEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as the store knows it."""

    worker_id: str
    group: str
    task_types: frozenset[str]
    concurrency: int
    first_seen_ms: int
    last_seen_ms: int
    holding: int


@dataclass(frozen=True, slots=True)
class DepthRow:
    """How many tasks share a type, priority, partition and state."""

    task_type: str
    priority: int
    partition: int
    state: TaskState
    count: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of the queue.

    Attributes:
        depths: Task counts by type, priority, partition and state (final states included).
        oldest_pending_ms: Per task type, the ``available_ms`` of its oldest claimable-or-
            waiting PENDING task.
        recent_processing_s: Per task type, mean processing time of recently completed
            tasks (seconds), for the autoscaling signal.
    """

    depths: list[DepthRow]
    oldest_pending_ms: dict[str, int]
    recent_processing_s: dict[str, float]


class TaskStore(Protocol):
    """Task storage with atomic transitions. See the module docstring for the contract."""

    async def submit(
        self, tasks: Sequence[Task], *, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        """Store new PENDING tasks (all or none); return them (or the idempotent twins)."""
        ...

    async def get(self, task_id: int) -> Task:
        """Return a task; raise :class:`TaskNotFound`."""
        ...

    async def claim(self, claim: Claim, *, now_ms: int) -> tuple[list[Task], list[TaskEvent]]:
        """Assign up to ``claim.limit`` claimable tasks to the worker (PENDING -> ASSIGNED)."""
        ...

    async def heartbeat(self, beat: Heartbeat, *, now_ms: int) -> HeartbeatAnswer:
        """Record the worker alive, mark ``started`` tasks IN_PROGRESS, extend its leases."""
        ...

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None, now_ms: int
    ) -> list[TaskEvent]:
        """Record success (releases dependents)."""
        ...

    async def complete_many(
        self, items: Sequence[CompleteRequest], *, now_ms: int
    ) -> list[CompleteOutcome]:
        """Record many successes; per item, its events or its error (never raised)."""
        ...

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
        ...

    async def cancel(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Fail a PENDING or running task with reason ``cancelled`` (cascading)."""
        ...

    async def redrive(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Put a FAILED task back to PENDING with a fresh retry budget."""
        ...

    async def sweep(self, *, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        """Reclaim expired leases, apply deadlines, forget workers silent for ``worker_ttl_ms``."""
        ...

    async def stats(self, *, now_ms: int) -> QueueStats:
        """Return depths, oldest pending times and recent processing times."""
        ...

    async def workers(self, *, now_ms: int) -> list[WorkerInfo]:
        """Return the workers seen and not yet forgotten."""
        ...

    async def wait_for_work(
        self, after: int, timeout_s: float, partitions: Collection[int] | None = None
    ) -> int:
        """Wait until tasks may have become claimable (a submit, a release, a backoff that
        ended) in ``partitions`` (``None``: any) since the store's wake-up count of those
        partitions was ``after``, or ``timeout_s`` passed.

        Returns the count now; ``after < 0`` (or no timeout) returns it at once, so a
        caller reads it before a claim and waits with it after an empty one (with the
        same ``partitions``). A store that cannot see other processes' changes waits out
        the timeout.
        """
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
