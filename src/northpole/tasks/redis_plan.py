"""Pure planning for the Redis task store: where a claim takes from.

Nothing here talks to Redis: the store reads, calls these, then writes.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from northpole.tasks.scheduler import steal_order


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
