"""Scheduling rules, pure: partitions, priority with aging, consumer groups, autoscaling.

**Priorities without starvation (aging).** Tasks are claimed in order of
``schedule_key = available_ms - priority * aging_ms``, smallest first. That is
the same order as "highest ``priority + waited_ms / aging_ms`` first", so a
waiting task gains one priority level per ``aging_ms`` of waiting, but as a
key that never changes once the task is queued (and so can be indexed). A task
of priority ``p`` queued at ``t`` is claimed before every task of priority
``q > p`` queued after ``t + (q - p) * aging_ms``: its wait is bounded by that,
plus the time to drain what was queued ahead of it.

**Partitions.** ``partition_of(gift_id) = crc32(gift_id as 8 bytes) % partitions``:
stable across processes and Python versions (unlike ``hash()``), so one gift's
tasks always land in one partition.

**Consumer groups.** The live workers of a group share the partitions in
rendezvous fashion: each partition goes to the worker with the highest
``blake2b(worker_id:partition)`` (crc32 would do for partitions of gifts, but
it is linear, which skews rendezvous shares badly). Every process computes the same answer from the
same member list, and when a worker joins or leaves only its own partitions
move (rebalancing). A worker that finds nothing in its partitions steals from
the deepest partition of the group (work stealing).

**Autoscaling signal.** ``desired_workers`` is the number of workers needed to
drain the current depth within ``target_drain_s`` at the recent processing rate.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence


def partition_of(gift_id: int, partitions: int) -> int:
    """Return the partition of a gift: ``crc32(gift_id, 8 bytes big-endian) % partitions``."""
    return zlib.crc32(gift_id.to_bytes(8, "big", signed=True)) % partitions


def schedule_key(priority: int, available_ms: int, aging_ms: int) -> int:
    """Return the claim order key: smaller is claimed first (see the module docstring)."""
    return available_ms - priority * aging_ms


def assign_partitions(partitions: int, workers: Iterable[str]) -> dict[str, list[int]]:
    """Spread ``partitions`` over ``workers`` by rendezvous hashing.

    Returns:
        Each worker's partitions, ascending; every partition goes to exactly one
        worker (none if there are no workers).
    """
    members = sorted(set(workers))
    owned: dict[str, list[int]] = {worker: [] for worker in members}
    if not members:
        return owned
    for partition in range(partitions):
        owner = max(members, key=lambda w: (_weight(w, partition), w))
        owned[owner].append(partition)
    return owned


def _weight(worker: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{worker}:{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def steal_order(depths: Mapping[int, int], own: Sequence[int]) -> list[int]:
    """Return other partitions with work, deepest first: where an idle worker steals from."""
    mine = set(own)
    others = [(depth, p) for p, depth in depths.items() if p not in mine and depth > 0]
    return [p for _, p in sorted(others, key=lambda item: (-item[0], item[1]))]


def desired_workers(
    *,
    depth: int,
    avg_processing_s: float,
    concurrency: int,
    target_drain_s: float,
    minimum: int = 0,
    maximum: int = 1_000,
) -> int:
    """Return how many workers would drain ``depth`` tasks within ``target_drain_s``.

    Args:
        depth: Claimable plus running tasks.
        avg_processing_s: Recent mean processing time of one task.
        concurrency: Tasks one worker runs at once.
        target_drain_s: How soon the queue should be empty.
        minimum: Lower bound of the answer.
        maximum: Upper bound of the answer.
    """
    if depth <= 0:
        return minimum
    work_s = depth * max(avg_processing_s, 0.0)
    needed = math.ceil(work_s / (max(concurrency, 1) * max(target_drain_s, 1e-9)))
    return max(minimum, min(maximum, max(needed, 1)))


def find_cycle(edges: Mapping[int, Sequence[int]]) -> list[int] | None:
    """Return one dependency cycle among ``edges`` (task -> its dependencies), or None.

    Only edges between keys of ``edges`` count: dependencies on tasks outside
    it (already stored, so unable to depend on new ones) cannot close a cycle.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    for root in edges:
        if colour[root] != white:
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        path: list[int] = [root]
        colour[root] = grey
        while stack:
            node, index = stack[-1]
            deps = [d for d in edges[node] if d in edges]
            if index < len(deps):
                stack[-1] = (node, index + 1)
                nxt = deps[index]
                if colour[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None
