"""Every state transition of a task, as a pure function: (task, inputs) -> (task, event).

Each function checks that the transition is legal from the task's current
state and raises :class:`IllegalTransition` (HTTP 409) otherwise; nothing here
reads a clock, a store or randomness, which callers pass in. Stores apply these
functions inside their transactions, so every store enforces the same machine.

Legal edges::

    PENDING     -> ASSIGNED        assign      (a worker claims it; attempts+1, fence+1)
    ASSIGNED    -> IN_PROGRESS     start       (the handler begins)
    IN_PROGRESS -> COMPLETED       complete    (ASSIGNED -> COMPLETED passes through start)
    ASSIGNED    -> PENDING|FAILED  fail_attempt (retry after backoff, or dead letter)
    IN_PROGRESS -> PENDING|FAILED  fail_attempt
    ASSIGNED    -> FAILED          fail_final  (deadline_exceeded, cancelled)
    IN_PROGRESS -> FAILED          fail_final
    PENDING     -> FAILED          fail_final  (cancelled, dependency_failed: it never ran)
    PENDING     -> EXPIRED         expire      (deadline passed before it started)
    FAILED      -> PENDING         redrive     (an operator re-drives a dead letter)
"""

from __future__ import annotations

from dataclasses import replace

from northpole.core.errors import Conflict
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState

S = TaskState


class IllegalTransition(Conflict):
    """A transition that the state machine does not allow from the task's state."""

    code = "illegal_transition"

    def __init__(self, task: Task, action: str) -> None:
        super().__init__(
            f"cannot {action} task {task.id} in state {task.state.value}", field="state"
        )
        self.task_id = task.id
        self.state = task.state
        self.action = action


class StaleFence(Conflict):
    """A worker acted on a task it no longer holds (its lease was taken away)."""

    code = "stale_fence"

    def __init__(self, task: Task, worker_id: str, fence: int) -> None:
        super().__init__(
            f"task {task.id} is no longer held by worker {worker_id!r} with fence {fence} "
            f"(state {task.state.value}, fence {task.fence})",
            field="fence",
        )


def _event(old: Task, new: Task, reason: str | None = None) -> TaskEvent:
    return TaskEvent(
        task_id=new.id,
        gift_id=new.gift_id,
        task_type=new.task_type,
        old_state=old.state,
        new_state=new.state,
        at_ms=new.updated_ms,
        reason=reason,
        attempt=new.attempts,
        started_ms=new.started_ms if new.started_ms is not None else old.started_ms,
    )


def _require(task: Task, action: str, *states: TaskState) -> None:
    if task.state not in states:
        raise IllegalTransition(task, action)


def check_holder(task: Task, worker_id: str, fence: int) -> None:
    """Raise :class:`StaleFence` unless ``worker_id`` holds ``task`` under ``fence``."""
    if not task.state.is_running or task.worker_id != worker_id or task.fence != fence:
        raise StaleFence(task, worker_id, fence)


def assign(task: Task, *, worker_id: str, now_ms: int, lease_ms: int) -> tuple[Task, TaskEvent]:
    """PENDING -> ASSIGNED: a worker claims the task under a new lease and fence."""
    _require(task, "assign", S.PENDING)
    new = replace(
        task,
        state=S.ASSIGNED,
        worker_id=worker_id,
        lease_until_ms=now_ms + lease_ms,
        fence=task.fence + 1,
        attempts=task.attempts + 1,
        updated_ms=now_ms,
    )
    return new, _event(task, new)


def start(task: Task, *, worker_id: str, fence: int, now_ms: int) -> tuple[Task, TaskEvent]:
    """ASSIGNED -> IN_PROGRESS: the holder's handler begins."""
    check_holder(task, worker_id, fence)
    _require(task, "start", S.ASSIGNED)
    new = replace(task, state=S.IN_PROGRESS, started_ms=now_ms, updated_ms=now_ms)
    return new, _event(task, new)


def complete(
    task: Task, *, worker_id: str, fence: int, now_ms: int, result: str | None
) -> list[tuple[Task, TaskEvent]]:
    """IN_PROGRESS -> COMPLETED (an ASSIGNED task is started first, in the same step).

    A task completed without a reported start is taken to have started when it
    was assigned (its ``updated_ms``), so its processing time is not zero.
    """
    check_holder(task, worker_id, fence)
    steps: list[tuple[Task, TaskEvent]] = []
    if task.state is S.ASSIGNED:
        started, _ = start(task, worker_id=worker_id, fence=fence, now_ms=now_ms)
        started = replace(started, started_ms=task.updated_ms)
        steps.append((started, _event(task, started)))
        task = started
    _require(task, "complete", S.IN_PROGRESS)
    new = replace(
        task,
        state=S.COMPLETED,
        worker_id=None,
        lease_until_ms=None,
        finished_ms=now_ms,
        updated_ms=now_ms,
        result=result,
    )
    steps.append((new, _event(task, new)))
    return steps


def fail_attempt(
    task: Task, *, reason: Reason, message: str, now_ms: int, retry_delay_ms: int | None
) -> tuple[Task, TaskEvent]:
    """End a running attempt in failure: back to PENDING after a delay, or FAILED.

    Unlike :func:`start` and :func:`complete` this does not check the holder,
    because the sweeper also ends attempts (expired leases) on nobody's behalf:
    a store applying a *worker's* failure report calls :func:`check_holder` first.

    Args:
        task: An ASSIGNED or IN_PROGRESS task.
        reason: Why the attempt failed.
        message: Details (the handler's exception text, ...).
        now_ms: Current time.
        retry_delay_ms: Backoff before the retry (from the retry policy); ``None``
            means do not retry (a deadline passed, or the handler said so).

    The task is retried only if ``retry_delay_ms`` is given and it has retries
    left (``retry_count < max_retries``); otherwise it becomes FAILED.
    """
    _require(task, "fail", S.ASSIGNED, S.IN_PROGRESS)
    error = f"{reason.value}: {message}" if message else reason.value
    if retry_delay_ms is not None and task.retry_count < task.max_retries:
        new = replace(
            task,
            state=S.PENDING,
            retry_count=task.retry_count + 1,
            available_ms=now_ms + max(0, retry_delay_ms),
            worker_id=None,
            lease_until_ms=None,
            started_ms=None,
            updated_ms=now_ms,
            last_error=error,
        )
        return new, _event(task, new, reason.value)
    final_reason = reason if retry_delay_ms is None else Reason.RETRIES_EXHAUSTED
    new = replace(
        task,
        state=S.FAILED,
        worker_id=None,
        lease_until_ms=None,
        finished_ms=now_ms,
        updated_ms=now_ms,
        last_error=error,
    )
    return new, _event(task, new, final_reason.value)


def fail_final(task: Task, *, reason: Reason, message: str, now_ms: int) -> tuple[Task, TaskEvent]:
    """PENDING, ASSIGNED or IN_PROGRESS -> FAILED without retry (cancel, deadline, dependency)."""
    _require(task, "fail", S.PENDING, S.ASSIGNED, S.IN_PROGRESS)
    new = replace(
        task,
        state=S.FAILED,
        worker_id=None,
        lease_until_ms=None,
        finished_ms=now_ms,
        updated_ms=now_ms,
        last_error=f"{reason.value}: {message}" if message else reason.value,
    )
    return new, _event(task, new, reason.value)


def expire(task: Task, *, now_ms: int) -> tuple[Task, TaskEvent]:
    """PENDING -> EXPIRED: the deadline passed before the task started."""
    _require(task, "expire", S.PENDING)
    if task.deadline_ms is None or task.deadline_ms > now_ms:
        raise IllegalTransition(task, "expire (deadline not reached)")
    new = replace(task, state=S.EXPIRED, finished_ms=now_ms, updated_ms=now_ms)
    return new, _event(task, new, Reason.DEADLINE_EXCEEDED.value)


def redrive(task: Task, *, now_ms: int) -> tuple[Task, TaskEvent]:
    """FAILED -> PENDING: an operator re-drives a dead letter with a fresh retry budget."""
    _require(task, "redrive", S.FAILED)
    new = replace(
        task,
        state=S.PENDING,
        retry_count=0,
        available_ms=now_ms,
        finished_ms=None,
        started_ms=None,
        updated_ms=now_ms,
    )
    return new, _event(task, new, "redriven")
