"""Claims and heartbeats of the Redis task store: the worker's side of the protocol.

A claim is two round trips: the worker registers and peeks at every partition
(the depth of the ready queues, and the heads of those it owns, in claim
order), the pure planner
(:func:`northpole.tasks.redis_plan.plan_claim`) picks how many to take from
each partition (the worker's own partitions first, in claim order; stealing
from the deepest others when they are short), then one ``claim`` script per
chosen partition assigns them. If concurrent claims took what was peeked, it
peeks again, a bounded number of rounds.

Other workers' partitions are peeked at (for their depth, to steal from the
deepest) at most every ``STEAL_EVERY_S`` per worker
(:meth:`~northpole.tasks.redis_store.RedisTaskStore.steal_due`); the claims in
between peek at the worker's own partitions only, which with many workers is a
small share of them.

A peek asks for heads only from the partitions the worker owned at its last
claim (the group's members are remembered per store), and only about its share
of the limit from each, plus a margin: the planner takes whatever the heads do
not cover by depth. Asking every partition for ``limit`` heads made the peek,
not the claim, the main cost (a sort and a reply of thousands of heads per
claim).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from northpole.tasks.model import Task, TaskEvent, TaskState
from northpole.tasks.redis_codec import events_from_reply, task_from_hash
from northpole.tasks.redis_plan import Peek, plan_claim
from northpole.tasks.redis_scripts import Call
from northpole.tasks.scheduler import assign_partitions, schedule_key
from northpole.tasks.store import Claim, Heartbeat, HeartbeatAnswer

if TYPE_CHECKING:
    from northpole.tasks.redis_store import RedisTaskStore

#: Heads a claim looks at per partition at most (more are taken by depth).
PEEK_MAX = 256
#: Heads a peek asks for beyond a partition's share of the limit.
PEEK_MARGIN = 8
#: Rounds a claim makes when concurrent claims took what it peeked.
CLAIM_ROUNDS = 10


@functools.lru_cache(maxsize=64)
def partition_map(partitions: int, members: tuple[str, ...]) -> dict[str, list[int]]:
    """The rendezvous ownership of partitions among a group's members (cached)."""
    return assign_partitions(partitions, members)


def owned(store: RedisTaskStore, group: str, worker_id: str) -> list[int]:
    """The partitions ``worker_id`` owns as of its group's last registration (none if the
    group is not known yet)."""
    members = store.group_members.get(group)
    return partition_map(store.partitions, members).get(worker_id, []) if members else []


def register_call(
    store: RedisTaskStore,
    worker_id: str,
    group: str,
    task_types: frozenset[str],
    concurrency: int | None,
    now_ms: int,
) -> Call:
    """The ``register`` call that records a worker as seen and returns its group."""
    types = orjson.dumps(sorted(task_types)).decode()
    return Call(
        "register",
        (store.keys.workers_prefix,),
        (now_ms, worker_id, group, types, "" if concurrency is None else concurrency),
    )


def _peek(reply: list[Any]) -> Peek:
    heads = tuple((int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2))
    return Peek(int(reply[0]), heads)


async def claim(
    store: RedisTaskStore, claim: Claim, now_ms: int
) -> tuple[list[Task], list[TaskEvent]]:
    """Assign up to ``claim.limit`` claimable tasks to the worker (PENDING -> ASSIGNED)."""
    types = sorted(claim.task_types)
    partitions = store.partitions
    members = store.group_members.get(claim.group, ())
    guess = set(partition_map(partitions, members).get(claim.worker_id, ()))
    if not guess:
        guess = set(range(partitions))
    share = -(-max(claim.limit, 0) // len(guess)) + PEEK_MARGIN
    peek_limit = max(0, min(claim.limit, share, PEEK_MAX))
    # Other workers' partitions are looked at (to steal from) at most every STEAL_EVERY_S.
    if claim.limit <= 0:  # only registers the worker
        looked: Sequence[int] = ()
    elif store.steal_due(claim.worker_id):
        looked = range(partitions)
    else:
        looked = sorted(guess)
    # The worker is registered (seen, and its group read) at most every REGISTER_EVERY_S
    # by its claims; its heartbeats register it too.
    register = (
        claim.limit <= 0
        or claim.group not in store.group_members
        or store.register_due(claim.worker_id)
    )
    calls = (
        [register_call(store, claim.worker_id, claim.group, claim.task_types, None, now_ms)]
        if register
        else []
    )
    calls += [
        store.call("peek", p, now_ms, peek_limit if p in guess else 0, len(types), *types)
        for p in looked
    ]
    replies = await store.runner.run(calls)
    if register:
        store.group_members[claim.group] = tuple(replies.pop(0))
    own = owned(store, claim.group, claim.worker_id)
    if claim.limit <= 0:
        return [], []
    peeks = {p: _peek(reply) for p, reply in zip(looked, replies, strict=True)}
    claimed: list[Task] = []
    events: list[TaskEvent] = []
    for _ in range(CLAIM_ROUNDS):
        plan = plan_claim(peeks, own, claim.limit - len(claimed))
        if not plan:
            break
        short = await _claim_round(store, plan, set(own), claim, types, now_ms, claimed, events)
        if len(claimed) >= claim.limit or not short:
            break
        mine = set(own)
        replies = await store.runner.run(
            [
                store.call("peek", p, now_ms, peek_limit if p in mine else 0, len(types), *types)
                for p in peeks
            ]
        )
        peeks = {p: _peek(reply) for p, reply in zip(peeks, replies, strict=True)}
    return claimed, events


async def claim_from(
    store: RedisTaskStore, claim: Claim, partitions: Sequence[int], now_ms: int
) -> tuple[list[Task], list[TaskEvent]]:
    """Claim from ``partitions`` only, splitting the limit evenly, without peeking first.

    For a worker whose last claim drained its partitions and that was woken for
    these since: one round trip instead of two (see ``RedisTaskStore.claim``).
    """
    types = sorted(claim.task_types)
    base, extra = divmod(claim.limit, len(partitions))
    plan = [(p, base + (k < extra)) for k, p in enumerate(partitions)]
    plan = [(p, n) for p, n in plan if n > 0]
    claimed: list[Task] = []
    events: list[TaskEvent] = []
    await _claim_round(store, plan, set(partitions), claim, types, now_ms, claimed, events)
    return claimed, events


async def _claim_round(
    store: RedisTaskStore,
    plan: list[tuple[int, int]],
    own_parts: set[int],
    claim: Claim,
    types: list[str],
    now_ms: int,
    claimed: list[Task],
    events: list[TaskEvent],
) -> bool:
    """Claim as planned; append tasks (own partitions in claim order, then stolen ones).

    Returns whether a partition gave fewer tasks than planned.
    """
    calls = [
        store.call("claim", p, now_ms, n, claim.lease_ms, claim.worker_id, len(types), *types)
        for p, n in plan
    ]
    replies = await store.runner.run(calls)
    short = False
    own: list[Task] = []
    stolen: list[Task] = []
    changes = {
        "s": "ASSIGNED",
        "w": claim.worker_id,
        "l": str(now_ms + claim.lease_ms),
        "u": str(now_ms),
        "cl": str(now_ms),
    }
    for (partition, n), records in zip(plan, replies, strict=True):
        tasks = [assigned(r, changes) for r in records]
        short = short or len(tasks) < n
        for task in tasks:
            store.remember(task.id, partition)
        (own if partition in own_parts else stolen).extend(tasks)
    if len(own) > 1:
        aging = store.aging_ms
        own.sort(key=lambda t: (schedule_key(t.priority, t.available_ms, aging), t.id))
    for task in (*own, *stolen):
        claimed.append(task)
        events.append(
            TaskEvent(
                task_id=task.id,
                gift_id=task.gift_id,
                task_type=task.task_type,
                old_state=TaskState.PENDING,
                new_state=TaskState.ASSIGNED,
                at_ms=now_ms,
                attempt=task.attempts,
                started_ms=task.started_ms,
            )
        )
    return short


def assigned(before: list[str], changes: dict[str, str]) -> Task:
    """The task of a ``claim`` record as read before the assignment, with its changes.

    The script returns the record as it read it (no re-encoding in Lua); an
    assignment sets ``changes`` (state, worker, lease end, update and claim times)
    and increments the fence and the attempts.
    """
    it = iter(before)
    fields = dict(zip(it, it, strict=True))
    fields.update(changes)
    fields["f"] = str(int(fields.get("f", 0)) + 1)
    fields["n"] = str(int(fields.get("n", 0)) + 1)
    return task_from_hash(fields)


async def heartbeat(store: RedisTaskStore, beat: Heartbeat, now_ms: int) -> HeartbeatAnswer:
    """Record the worker alive, mark ``started`` tasks IN_PROGRESS, extend its leases.

    Only the leases of tasks listed in ``holding`` (or ``started``) are extended.
    """
    shown = [*beat.holding, *beat.started]
    where = await store.locate(i for i, _ in shown) if shown else {}
    by_partition: dict[int, tuple[list[str], list[str]]] = {}
    for items, slot in ((beat.started, 0), (beat.holding, 1)):
        for task_id, fence in items:
            if task_id in where:
                pair = by_partition.setdefault(where[task_id], ([], []))
                pair[slot].extend((str(task_id), str(fence)))
    calls = [
        register_call(store, beat.worker_id, beat.group, beat.task_types, beat.concurrency, now_ms)
    ]
    for p in sorted(by_partition):
        started, holding = by_partition[p]
        calls.append(
            store.call(
                "heartbeat",
                p,
                now_ms,
                beat.lease_ms,
                beat.worker_id,
                len(started) // 2,
                *started,
                len(holding) // 2,
                *holding,
            )
        )
    replies = await store.runner.run(calls)
    store.group_members[beat.group] = tuple(replies[0])
    own = owned(store, beat.group, beat.worker_id)
    held: set[int] = set()
    events: list[TaskEvent] = []
    for held_ids, evs in replies[1:]:
        held.update(int(i) for i in held_ids)
        events.extend(events_from_reply(evs))
    cancel = tuple(dict.fromkeys(i for i, _ in beat.holding if i not in held))
    return HeartbeatAnswer(cancel=cancel, partitions=tuple(own), events=events)
