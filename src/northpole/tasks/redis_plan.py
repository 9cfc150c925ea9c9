"""Pure planning for the Redis task store: what a submit stores, where a claim takes from.

Nothing here talks to Redis: the store reads, calls these, then writes.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from northpole.tasks.model import Task, TaskState
from northpole.tasks.scheduler import steal_order

S = TaskState
FAILED_ENDS = frozenset({S.FAILED, S.EXPIRED})


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


@dataclass(frozen=True, slots=True)
class Peek:
    """One partition's claimable depth and the head of its ready queues.

    Attributes:
        depth: Claimable tasks of the worker's types.
        heads: ``(sched_key, task_id)`` of the first of them, in claim order.
    """

    depth: int
    heads: tuple[tuple[int, int], ...]


def plan_claim(
    peeks: Mapping[int, Peek], own: Sequence[int], limit: int, *, steal: bool = True
) -> list[tuple[int, int]]:
    """Decide how many tasks to claim from which partition, in the order to claim them.

    The worker's own partitions come first: their heads merged in claim order
    (then, if the heads ran short, more from the deepest of them); then other
    partitions in ``scheduler.steal_order``, deepest first, each taken as far
    as it goes.

    Returns:
        ``(partition, count)`` pairs, own partitions first, with positive counts
        adding up to at most ``limit``.
    """
    counts: dict[int, int] = {}
    mine = [p for p in own if p in peeks]
    merged = heapq.merge(*(peeks[p].heads for p in mine), key=lambda h: h)
    by_id = {task_id: p for p in mine for _, task_id in peeks[p].heads}
    taken = 0
    for _, task_id in merged:
        if taken >= limit:
            break
        partition = by_id[task_id]
        counts[partition] = counts.get(partition, 0) + 1
        taken += 1
    for partition in sorted(mine, key=lambda p: -peeks[p].depth):
        extra = min(limit - taken, peeks[partition].depth - counts.get(partition, 0))
        if extra > 0:
            counts[partition] = counts.get(partition, 0) + extra
            taken += extra
    plan = [(p, n) for p, n in counts.items() if n > 0]
    if steal and taken < limit:
        depths = {p: peek.depth for p, peek in peeks.items()}
        for partition in steal_order(depths, own):
            n = min(limit - taken, depths[partition])
            plan.append((partition, n))
            taken += n
            if taken >= limit:
                break
    return plan
