"""The task model: states, the Task record and what a submitter sends.

A task is one unit of work on one gift (``gift_id``); a gift has many tasks
(build, wrap, load, ...). Task ids are Gift IDs from the generator. Times are
Unix milliseconds throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: Largest metadata a task may carry, keys and values together, in bytes.
MAX_METADATA_BYTES = 16_384
#: Most tasks one submit may carry.
MAX_BATCH = 10_000
#: The most tasks one worker may hold at once (what one heartbeat can name).
MAX_HELD = 10_000
MIN_PRIORITY = -(2**31)
MAX_PRIORITY = 2**31 - 1


class TaskState(StrEnum):
    """The design's states.

    ::

        PENDING -> ASSIGNED -> IN_PROGRESS -> COMPLETED
           |          |            |
           |          └────────────┴────────> FAILED   (or back to PENDING to retry)
           ├────────────────────────────────> FAILED   (cancelled, dependency_failed)
           └────────────────────────────────> EXPIRED
    """

    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        """Whether the task can never move again (except an operator's re-drive of FAILED)."""
        return self in _FINAL

    @property
    def is_running(self) -> bool:
        """Whether a worker holds the task."""
        return self in _RUNNING


_FINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.EXPIRED})
#: Final states that fail a task's dependents.
FAILED_ENDS = frozenset({TaskState.FAILED, TaskState.EXPIRED})
_RUNNING = frozenset({TaskState.ASSIGNED, TaskState.IN_PROGRESS})


class Reason(StrEnum):
    """Why a task failed or an attempt ended (``Task.last_error`` starts with it)."""

    HANDLER_ERROR = "handler_error"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    DEPENDENCY_FAILED = "dependency_failed"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"
    RETRIES_EXHAUSTED = "retries_exhausted"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a submitter asks for; the queue fills in the rest.

    Attributes:
        gift_id: The gift this task works on.
        task_type: What to do (free text; workers declare the types they handle).
        priority: Higher runs first (int32); aging keeps low priorities moving.
        dependencies: Task ids that must be COMPLETED first.
        max_retries: Attempts after the first one before the task is FAILED.
        deadline_ms: After this Unix ms the task expires or fails; None for never.
        metadata: String-to-string data for the handler.
        idempotency_key: Submitting the same key again returns the existing task.
    """

    gift_id: int
    task_type: str
    priority: int = 0
    dependencies: tuple[int, ...] = ()
    max_retries: int = 3
    deadline_ms: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    """A task as stored. Immutable: transitions return a new one.

    Attributes:
        id: The task id (a Gift ID).
        partition: ``partition_of(gift_id)``, fixed at submit.
        state: Where it is in the state machine.
        attempts: Attempts started so far (the running one included).
        retry_count: Failed attempts that were retried (the design's field).
        available_ms: Not claimable before this time (retry backoff).
        worker_id: The worker holding it, while ASSIGNED or IN_PROGRESS.
        lease_until_ms: The holder's lease; past it the task is reclaimed.
        fence: Fencing token, raised at every assignment; a worker must show
            the fence it was given, so a worker whose lease was taken away
            cannot complete the task.
        last_error: ``"<reason>: <message>"`` of the last failed attempt.
        result: What the handler returned (text), once COMPLETED.
    """

    id: int
    gift_id: int
    task_type: str
    priority: int
    dependencies: tuple[int, ...]
    max_retries: int
    deadline_ms: int | None
    metadata: dict[str, str]
    idempotency_key: str | None
    partition: int
    state: TaskState
    created_ms: int
    updated_ms: int
    available_ms: int
    attempts: int = 0
    retry_count: int = 0
    worker_id: str | None = None
    lease_until_ms: int | None = None
    fence: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    last_error: str | None = None
    result: str | None = None


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change, as published on the event port."""

    task_id: int
    gift_id: int
    task_type: str
    old_state: TaskState | None
    new_state: TaskState
    at_ms: int
    reason: str | None = None
    attempt: int = 0
    started_ms: int | None = None
