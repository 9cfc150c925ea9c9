"""Pure rules of a submitted batch, shared by every task store.

* :func:`split_twins`: tasks whose idempotency key is already stored (or used
  earlier in the same batch) are not stored again; dependencies on them are
  rewritten to the task they stand for.
* :func:`doomed`: new tasks that must fail at once because a dependency has
  already failed or expired, directly or through the batch.
* :func:`admit`: the new tasks as they are to be stored (the doomed ones
  FAILED) and the events of the submit.

Nothing here does I/O: a store reads what these need, calls them, then writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from northpole.tasks import transitions
from northpole.tasks.model import FAILED_ENDS, Reason, Task, TaskEvent, TaskState


@dataclass(slots=True)
class Twins:
    """A batch split into new tasks and tasks whose idempotency key is already taken.

    Attributes:
        new: The tasks to store, dependencies on twins rewritten to the stored task.
        twin_of: Batch id -> the id of the task it stands for (stored, or earlier in the batch).
        stored: Stored twins by id.
    """

    new: list[Task]
    twin_of: dict[int, int] = field(default_factory=dict)
    stored: dict[int, Task] = field(default_factory=dict)


def split_twins(batch: Sequence[Task], stored_by_key: Mapping[str, Task]) -> Twins:
    """Separate new tasks from those whose idempotency key is stored or earlier in the batch."""
    keys = [t.idempotency_key for t in batch if t.idempotency_key is not None]
    if not stored_by_key and len(set(keys)) == len(keys):
        return Twins(list(batch))
    first: dict[str, int] = {key: task.id for key, task in stored_by_key.items()}
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
    return Twins(new, twin_of, {t.id: t for t in stored_by_key.values()})


def _rewire(task: Task, twin_of: Mapping[int, int]) -> Task:
    deps = tuple(twin_of.get(d, d) for d in task.dependencies)
    return task if deps == task.dependencies else dataclasses.replace(task, dependencies=deps)


def doomed(
    new: Sequence[Task], new_ids: set[int], states: Mapping[int, TaskState]
) -> list[tuple[int, int]]:
    """Return ``(task, failed dependency)`` for new tasks that must fail at once, in cause order.

    Args:
        new: The tasks to store.
        new_ids: Their ids.
        states: The state of every stored dependency outside the batch.
    """
    if not states:  # no dependency outside the batch: nothing can have failed
        return []
    found: dict[int, int] = {}
    dependents: dict[int, list[int]] = {}
    for task in new:
        for dependency in task.dependencies:
            if dependency in new_ids:
                dependents.setdefault(dependency, []).append(task.id)
            elif states[dependency] in FAILED_ENDS:
                found.setdefault(task.id, dependency)
    frontier = list(found)
    for task_id in frontier:  # grows while we walk it: a breadth-first walk
        for dependent in dependents.get(task_id, ()):
            if dependent not in found:
                found[dependent] = task_id
                frontier.append(dependent)
    return list(found.items())


def admit(
    new: Sequence[Task], new_ids: set[int], states: Mapping[int, TaskState], now_ms: int
) -> tuple[dict[int, Task], list[TaskEvent]]:
    """Return the new tasks by id as they are to be stored, and the submit's events.

    Every task gets its ``None -> PENDING`` event; those :func:`doomed` by a failed
    dependency are stored FAILED (``dependency_failed``), their failures following
    in cause order.

    Args:
        new: The tasks to store.
        new_ids: Their ids.
        states: The state of every stored dependency outside the batch.
        now_ms: The submit's time.
    """
    final = {t.id: t for t in new}
    events = [submitted_event(t, now_ms) for t in new]
    for task_id, dependency in doomed(new, new_ids, states):
        failed, event = transitions.fail_final(
            final[task_id],
            reason=Reason.DEPENDENCY_FAILED,
            message=f"dependency {dependency} failed",
            now_ms=now_ms,
        )
        final[task_id] = failed
        events.append(event)
    return final, events


def submitted_event(task: Task, now_ms: int) -> TaskEvent:
    """The ``None -> PENDING`` event of a newly stored task."""
    return TaskEvent(
        task_id=task.id,
        gift_id=task.gift_id,
        task_type=task.task_type,
        old_state=None,
        new_state=TaskState.PENDING,
        at_ms=now_ms,
    )
