"""The sweeper of the Redis task store: expired leases, deadlines, late follow-ups, workers.

Safe in many processes at once: ``sweep_scan`` reads each partition's expired
leases and outbox entries older than ``outbox_grace_ms`` (one round trip), the
caller draws the retry delays with its retry policy, and ``sweep`` re-checks
each task (state, fence, lease) before it changes it, so a second sweeper
applies nothing twice. Then the follow-ups the sweep caused, and ``forget``
drops workers silent for longer than the worker TTL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from northpole.tasks.model import TaskEvent
from northpole.tasks.redis_codec import events_from_reply
from northpole.tasks.redis_follow import FollowUp, chunks, follow_items
from northpole.tasks.redis_scripts import Call

if TYPE_CHECKING:
    from northpole.tasks.redis_store import RedisTaskStore

#: Expired leases one sweep handles per partition.
SWEEP_LEASES = 1_000


async def sweep(
    store: RedisTaskStore, *, now_ms: int, worker_ttl_ms: int, grace_ms: int
) -> list[TaskEvent]:
    """Reclaim expired leases, apply deadlines, forget workers silent for ``worker_ttl_ms``."""
    scans = await store.runner.run(
        [
            store.call("sweep_scan", p, now_ms, grace_ms, SWEEP_LEASES)
            for p in range(store.partitions)
        ],
        write=False,
    )
    events: list[TaskEvent] = []
    owed: list[FollowUp] = []
    calls = []
    for partition, (leases, late, due) in enumerate(scans):
        owed += follow_items(partition, chunks(late, 4))
        args: list[str | int] = [store.aging_ms, len(leases) // 3]
        for task_id, fence, retry_count in chunks(leases, 3):
            args += [task_id, fence, store.backoff(int(retry_count))]
        if leases or int(due):
            calls.append(store.call("sweep", partition, now_ms, *args))
    if owed:
        events += await store.follow(owed, now_ms)
    follow: list[FollowUp] = []
    for call, (evs, more) in zip(calls, await store.runner.run(calls), strict=True):
        events += events_from_reply(evs)
        follow += follow_items(int(call.args[0]), more)
    events += await store.follow(follow, now_ms)
    await store.runner.run(
        [Call("forget", (store.keys.workers_prefix,), (now_ms - worker_ttl_ms,))]
    )
    return events
