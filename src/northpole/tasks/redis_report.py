"""Queue statistics and the worker list of the Redis task store (read-only).

Statistics add up per-partition counters (``depth``, ``dur``) and the heads of
the ``pend:<type>`` queues: a snapshot, not one instant across partitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from northpole.tasks.redis_codec import depth_key
from northpole.tasks.store import DepthRow, QueueStats, WorkerInfo

if TYPE_CHECKING:
    from northpole.tasks.redis_store import RedisTaskStore

#: Completions a type's mean processing time is (roughly) taken over.
DURATION_WINDOW = 100


async def stats(store: RedisTaskStore) -> QueueStats:
    """Return depths, oldest pending times and recent processing times."""
    k = store.keys
    commands: list[tuple[Any, ...]] = []
    for p in range(store.partitions):
        commands += [("HGETALL", k.depth(p)), ("HGETALL", k.durations(p)), ("SMEMBERS", k.types(p))]
    replies = await store.runner.commands(commands)
    depths: list[DepthRow] = []
    means: dict[str, list[tuple[float, int]]] = {}
    oldest_cmds: list[tuple[Any, ...]] = []
    oldest_types: list[str] = []
    for p in range(store.partitions):
        depth, durations, types = replies[3 * p : 3 * p + 3]
        for field, count in depth.items():
            state, priority, task_type = depth_key(field)
            depths.append(DepthRow(task_type, priority, p, state, int(count)))
        for task_type in types:
            if task_type in durations:
                samples = int(durations.get(f"{task_type}#n", "1"))
                weight = min(samples, DURATION_WINDOW)
                means.setdefault(task_type, []).append((float(durations[task_type]), weight))
            oldest_cmds.append(("ZRANGE", k.pending(p, task_type), 0, 0, "WITHSCORES"))
            oldest_types.append(task_type)
    oldest: dict[str, int] = {}
    heads = await store.runner.commands(oldest_cmds)
    for task_type, reply in zip(oldest_types, heads, strict=True):
        if reply:
            score = int(float(reply[0][1]))
            oldest[task_type] = min(oldest.get(task_type, score), score)
    recent = {
        t: sum(m * w for m, w in parts) / sum(w for _, w in parts) / 1000
        for t, parts in sorted(means.items())
    }
    return QueueStats(depths=depths, oldest_pending_ms=oldest, recent_processing_s=recent)


async def workers(store: RedisTaskStore) -> list[WorkerInfo]:
    """Return the workers seen and not yet forgotten."""
    commands: list[tuple[Any, ...]] = [("HGETALL", store.keys.workers)]
    commands += [("HGETALL", store.keys.holders(p)) for p in range(store.partitions)]
    replies = await store.runner.commands(commands)
    holding: dict[str, int] = {}
    for holders in replies[1:]:
        for worker, count in holders.items():
            holding[worker] = holding.get(worker, 0) + int(count)
    out = []
    for worker, raw in sorted(replies[0].items()):
        info = orjson.loads(raw)
        out.append(
            WorkerInfo(
                worker_id=worker,
                group=info["g"],
                task_types=frozenset(orjson.loads(info["t"])),
                concurrency=int(info["c"]),
                first_seen_ms=int(info["f"]),
                last_seen_ms=int(info["l"]),
                holding=holding.get(worker, 0),
            )
        )
    return out
