"""A gift's status follows its tasks: the pure rules.

The task queue publishes a ``task.state_changed`` event for every state change
of every task; each names the task's gift, type and new state. Four task types
(named in :class:`~northpole.registry.settings.LifecycleTaskTypes`, by default
``build``, ``wrap``, ``load`` and ``deliver``) move their gift:

==============  ======================  ==============
task type       task state              gift status
==============  ======================  ==============
build           ASSIGNED, IN_PROGRESS,  IN_PRODUCTION
                COMPLETED
wrap            ASSIGNED, IN_PROGRESS   IN_PRODUCTION
wrap            COMPLETED               WRAPPED
load            ASSIGNED, IN_PROGRESS   WRAPPED
load            COMPLETED               LOADED
deliver         ASSIGNED, IN_PROGRESS   LOADED
deliver         COMPLETED               DELIVERED
any of the four FAILED, EXPIRED         FAILED
==============  ======================  ==============

A later stage starting implies the earlier one is done (a wrap task runs on a
built gift), so a lost or late event cannot leave a gift behind. The status
becomes the one in the table only if that is further along than the current
one: statuses never go backwards, and an event seen twice (or one that arrives
after a later one) changes nothing. DELIVERED and FAILED are final; a task
that is retried goes back to PENDING, which changes nothing, and only its
final failure fails the gift. Events of other task types are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from northpole.registry.model import GiftStatus, StatusChange
from northpole.registry.settings import LifecycleTaskTypes

#: Task states, as the task queue names them.
ASSIGNED = "ASSIGNED"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
EXPIRED = "EXPIRED"

_STARTED = frozenset({ASSIGNED, IN_PROGRESS})
_FAILED = frozenset({FAILED, EXPIRED})


@dataclass(frozen=True, slots=True)
class TaskSignal:
    """What the registry reads from one task event.

    Attributes:
        gift_id: The task's gift.
        task_id: The task.
        task_type: Its type.
        task_state: The state it entered.
        at_ms: When.
    """

    gift_id: int
    task_id: int
    task_type: str
    task_state: str
    at_ms: int

    @property
    def cause(self) -> str:
        """The reason recorded with a status change: ``"task <id> <type> <state>"``."""
        return f"task {self.task_id} {self.task_type} {self.task_state}"


def target_status(signal: TaskSignal, types: LifecycleTaskTypes) -> GiftStatus | None:
    """The status the signal's row of the table names, or ``None`` if it names none."""
    state, kind = signal.task_state, signal.task_type
    stages = (types.build, types.wrap, types.load, types.deliver)
    if kind not in stages:
        return None
    if state in _FAILED:
        return GiftStatus.FAILED
    started = state in _STARTED
    if not started and state != COMPLETED:
        return None
    if kind == types.build:
        return GiftStatus.IN_PRODUCTION
    if kind == types.wrap:
        return GiftStatus.IN_PRODUCTION if started else GiftStatus.WRAPPED
    if kind == types.load:
        return GiftStatus.WRAPPED if started else GiftStatus.LOADED
    return GiftStatus.LOADED if started else GiftStatus.DELIVERED


def advance(
    current: GiftStatus, signal: TaskSignal, types: LifecycleTaskTypes
) -> GiftStatus | None:
    """Return the gift's new status after ``signal``, or ``None`` if it does not change.

    Args:
        current: The gift's status now.
        signal: One task event of the gift.
        types: The lifecycle's task types.
    """
    if current.is_final:
        return None
    target = target_status(signal, types)
    if target is None:
        return None
    if target is GiftStatus.FAILED or target.rank > current.rank:
        return target
    return None


def is_relevant(signal: TaskSignal, types: LifecycleTaskTypes) -> bool:
    """Whether the signal can move any gift (saves a database round trip for the rest)."""
    return target_status(signal, types) is not None


def plan(
    current: Mapping[int, GiftStatus], signals: Sequence[TaskSignal], types: LifecycleTaskTypes
) -> list[StatusChange]:
    """Run ``signals`` through :func:`advance`, in order, from the ``current`` statuses.

    Args:
        current: Each known gift's status now; signals of other gifts are skipped.
        signals: Task signals, oldest first.
        types: The lifecycle's task types.

    Returns:
        Every change, in signal order (a gift may change more than once).
    """
    status = dict(current)
    changes: list[StatusChange] = []
    for signal in signals:
        old = status.get(signal.gift_id)
        if old is None:
            continue
        new = advance(old, signal, types)
        if new is not None:
            status[signal.gift_id] = new
            changes.append(StatusChange(signal.gift_id, old, new, signal.at_ms, signal.cause))
    return changes


def final_statuses(changes: Sequence[StatusChange]) -> dict[int, GiftStatus]:
    """Each changed gift's status after ``changes`` (the last change of each wins)."""
    return {change.gift_id: change.new for change in changes}
