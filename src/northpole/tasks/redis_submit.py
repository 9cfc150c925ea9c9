"""The submit path of the Redis task store: validate a batch, then write it in two round trips.

A batch without idempotency keys or dependencies on stored tasks costs two
round trips: one ``locate`` script per directory bucket (task id -> partition,
reporting ids that are already there), then one ``submit`` script per
partition. Each script gets its tasks as one JSON argument, so the client
encodes one string per script instead of some thirty arguments per task, and
the scripts write each queue and counter once per call.

Order of a submit (see :mod:`northpole.tasks.redis_store` for what is atomic):

1. read the holders of the batch's idempotency keys (if any) and split the
   batch into new tasks and twins of stored ones;
2. read the stored dependencies; reject unknown ones and cycles;
3. reserve the new tasks' idempotency keys, all or none (if any);
4. write the directory; an id that is already stored undoes it, releases the
   keys and raises :class:`~northpole.core.errors.Conflict` (nothing written);
5. one ``submit`` per partition, then ``link`` for cross-partition edges, then
   the follow-ups those answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from northpole.core.errors import Conflict, InvalidInput, NorthpoleError, Unavailable
from northpole.tasks.batch import admit, split_twins
from northpole.tasks.model import Task, TaskEvent, TaskState
from northpole.tasks.redis_codec import events_from_reply, task_fields
from northpole.tasks.redis_follow import FollowUp, follow_items
from northpole.tasks.redis_scripts import Call
from northpole.tasks.scheduler import find_cycle
from northpole.tasks.store import DependencyCycle, UnknownDependency

if TYPE_CHECKING:
    from northpole.tasks.redis_store import RedisTaskStore

S = TaskState
#: Directory entries one ``locate`` call writes at most (Lua's unpack has a limit).
_LOCATE_CHUNK = 1_000
#: Attempts when the batch's idempotency keys are taken by a concurrent submit meanwhile.
_ATTEMPTS = 5
#: Batches up to this size are merged with concurrent ones (larger ones go alone).
MERGE_MAX = 100

#: One caller's submit: its tasks and its ``now_ms``.
Submit = tuple[list[Task], int]
#: Its answer: the tasks and events, or the error it must raise.
Answer = tuple[list[Task], list[TaskEvent]] | NorthpoleError


async def submit(
    store: RedisTaskStore, tasks: Sequence[Task], now_ms: int
) -> tuple[list[Task], list[TaskEvent]]:
    """Store new PENDING tasks (all or none); return them (or the idempotent twins)."""
    batch = list(tasks)
    check_batch(batch, store.partitions)
    if not batch:
        return [], []
    for _ in range(_ATTEMPTS):
        result = await _submit_once(store, batch, now_ms)
        if result is not None:
            return result
    raise Unavailable("idempotency keys of the batch kept changing; try again")


async def submit_merged(store: RedisTaskStore, calls: Sequence[Submit]) -> list[Answer]:
    """Store the batches of concurrent callers as one; answer each caller for its own.

    Single-task submits from many coroutines (an API server, a producer) then
    share two round trips instead of two each. The merged batch is written all or
    none at the latest ``now_ms`` of the callers; if it is refused (a clash, an
    unknown dependency, one caller's bad task), each caller's batch is tried
    alone, so a caller only ever gets its own error.
    """
    if len(calls) == 1:
        [(batch, now_ms)] = calls
        return [await _answer(store, batch, now_ms)]
    merged = [task for batch, _ in calls for task in batch]
    try:
        out, events = await submit(store, merged, max(now_ms for _, now_ms in calls))
    except NorthpoleError:
        return [await _answer(store, batch, now_ms) for batch, now_ms in calls]
    owner = {task.id: k for k, (batch, _) in enumerate(calls) for task in batch}
    answers: list[Answer] = []
    first = 0
    for batch, _ in calls:
        answers.append((out[first : first + len(batch)], []))
        first += len(batch)
    for event in events:
        answer = answers[owner.get(event.task_id, 0)]
        assert not isinstance(answer, NorthpoleError)  # noqa: S101 - built just above
        answer[1].append(event)
    return answers


async def _answer(store: RedisTaskStore, batch: list[Task], now_ms: int) -> Answer:
    try:
        return await submit(store, batch, now_ms)
    except NorthpoleError as exc:
        return exc


def check_batch(batch: Sequence[Task], partitions: int) -> None:
    """Reject tasks that are not PENDING, lie outside the partitions, or repeat an id."""
    ids: set[int] = set()
    for task in batch:
        if task.state is not S.PENDING:
            raise InvalidInput(f"task {task.id} is {task.state.value}, not PENDING", field="state")
        if not 0 <= task.partition < partitions:
            raise InvalidInput(
                f"task {task.id} has partition {task.partition}, not in [0, {partitions})",
                field="partition",
            )
        if task.id in ids:
            raise Conflict(f"task {task.id} appears twice in the batch", field="id")
        ids.add(task.id)


async def _submit_once(
    store: RedisTaskStore, batch: list[Task], now_ms: int
) -> tuple[list[Task], list[TaskEvent]] | None:
    """One attempt at a submit; None if an idempotency key was taken meanwhile."""
    stored_by_key, dangling = await _stored_keys(store, batch)
    twins = split_twins(batch, stored_by_key)
    new = twins.new
    if not new:
        return [twins.stored[twins.twin_of[t.id]] for t in batch], []
    new_ids = {t.id for t in new}
    deps = await _validate(store, new, new_ids)
    states = {d: t.state for d, t in deps.items()}
    final, events = admit(new, new_ids, states, now_ms)
    reserve = [
        str(x)
        for t in new
        if t.idempotency_key is not None
        for x in (t.idempotency_key, t.id, dangling.get(t.idempotency_key, ""))
    ]
    idem = store.keys.idempotency
    if reserve:
        [taken] = await store.runner.run([Call("idempotency", (idem,), ("reserve", *reserve))])
        if taken:
            return None
    try:
        events += await _write_new(store, list(final.values()), deps, new_ids, now_ms)
    except BaseException:
        if reserve:
            with contextlib.suppress(Unavailable):
                pairs = [x for i, x in enumerate(reserve) if i % 3 != 2]
                await store.runner.run([Call("idempotency", (idem,), ("release", *pairs))])
        raise
    stored = await store.load_many(final) if len(events) > len(new) else {}
    out = [
        stored.get(i) or final.get(i) or twins.stored[i]
        for i in (twins.twin_of.get(t.id, t.id) for t in batch)
    ]
    return out, events


async def _stored_keys(
    store: RedisTaskStore, batch: list[Task]
) -> tuple[dict[str, Task], dict[str, str]]:
    """Return the stored tasks holding the batch's idempotency keys, and keys held by
    ids with no task (left by a submit that died: free to take over)."""
    keys = list(dict.fromkeys(t.idempotency_key for t in batch if t.idempotency_key))
    stored_by_key: dict[str, Task] = {}
    dangling: dict[str, str] = {}
    if keys:
        holders = await store.runner.commands([("HMGET", store.keys.idempotency, *keys)])
        held = {k: int(v) for k, v in zip(keys, holders[0], strict=True) if v is not None}
        found = await store.load_many(held.values())
        for key, task_id in held.items():
            if task_id in found:
                stored_by_key[key] = found[task_id]
            else:
                dangling[key] = str(task_id)
    return stored_by_key, dangling


async def _validate(store: RedisTaskStore, new: list[Task], new_ids: set[int]) -> dict[int, Task]:
    """Check the new tasks' dependencies and cycles; return the stored dependencies."""
    outside = {d for t in new for d in t.dependencies if d not in new_ids}
    deps = await store.load_many(outside) if outside else {}
    for task in new:
        for dependency in task.dependencies:
            if dependency not in new_ids and dependency not in deps:
                raise UnknownDependency(task.id, dependency)
    if any(t.dependencies for t in new):
        cycle = find_cycle({t.id: t.dependencies for t in new if t.dependencies})
        if cycle is not None:
            raise DependencyCycle(cycle)
    return deps


async def _locate(store: RedisTaskStore, tasks: list[Task]) -> None:
    """Write the directory entries of ``tasks``; raise Conflict (undone) if one is stored."""
    keys = store.keys
    buckets: dict[str, list[str]] = {}
    for task in tasks:
        buckets.setdefault(keys.directory(task.id), []).extend((str(task.id), str(task.partition)))
    calls = [
        Call("locate", (key,), ("set", orjson.dumps(pairs[i : i + 2 * _LOCATE_CHUNK]).decode()))
        for key, pairs in buckets.items()
        for i in range(0, len(pairs), 2 * _LOCATE_CHUNK)
    ]
    replies = await store.runner.run(calls)
    clashes = {
        int(flat[i]): int(flat[i + 1]) for flat in replies if flat for i in range(0, len(flat), 2)
    }
    if not clashes:
        return
    order = list(clashes)
    found = await store.runner.commands([("EXISTS", keys.task(clashes[i], i)) for i in order])
    stored = [i for i, there in zip(order, found, strict=True) if there]
    if not stored:
        return  # entries left by a submit that died before writing its tasks: taken over
    undo: dict[str, list[str]] = {}
    for task in tasks:
        old = clashes.get(task.id)
        undo.setdefault(keys.directory(task.id), []).extend(
            (str(task.id), "" if old is None else str(old))
        )
    with contextlib.suppress(Unavailable):
        await store.runner.run(
            [
                Call("locate", (key,), ("undo", orjson.dumps(pairs[i : i + 2_000]).decode()))
                for key, pairs in undo.items()
                for i in range(0, len(pairs), 2_000)
            ]
        )
    raise Conflict(f"task {min(stored)} already exists", field="id")


async def _write_new(
    store: RedisTaskStore,
    tasks: list[Task],
    deps: dict[int, Task],
    new_ids: set[int],
    now_ms: int,
) -> list[TaskEvent]:
    """Write the directory, then each partition's tasks, then cross-partition edges."""
    await _locate(store, tasks)
    for task in tasks:
        store.remember(task.id, task.partition)
    part_of = {t.id: t.partition for t in tasks}
    part_of.update({d: t.partition for d, t in deps.items()})
    per_partition: dict[int, list[Any]] = {}
    links: dict[int, list[str | int]] = {}
    aging_ms = store.aging_ms
    for task in tasks:
        fields = task_fields(task, aging_ms=aging_ms)
        item: list[Any] = [str(task.id), fields, [], []]
        if task.dependencies:
            distinct = list(dict.fromkeys(task.dependencies))
            pending = task.state is S.PENDING
            item[2] = [
                str(d)
                for d in distinct
                if pending and (d in new_ids or deps[d].state is not S.COMPLETED)
            ]
            item[3] = [str(d) for d in distinct if part_of[d] == task.partition]
            for d in distinct:
                if part_of[d] != task.partition:
                    links.setdefault(part_of[d], []).extend((d, task.id, task.partition))
        per_partition.setdefault(task.partition, []).append(item)
    calls = [
        store.call("submit", p, now_ms, orjson.dumps(items).decode())
        for p, items in sorted(per_partition.items())
    ]
    events: list[TaskEvent] = []
    follow: list[FollowUp] = []
    for call, reply in zip(calls, await store.runner.run(calls), strict=True):
        if reply[0] == "exists":
            raise Conflict(f"task {reply[1]} already exists", field="id")
        events += events_from_reply(reply[1])
        follow += follow_items(int(call.args[0]), reply[2])
    link_calls = [
        store.call("link", p, now_ms, len(args) // 3, *args) for p, args in sorted(links.items())
    ]
    for call, owed in zip(link_calls, await store.runner.run(link_calls), strict=True):
        follow += follow_items(int(call.args[0]), owed)
    return events + await store.follow(follow, now_ms)
