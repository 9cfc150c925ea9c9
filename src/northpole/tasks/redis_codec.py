"""Task records <-> Redis hash fields, and the replies of the Lua scripts -> events.

**Why a hash per task** (not the ``Task`` protobuf of ``proto/northpole/v1/task.proto``,
nor one msgpack or JSON string): the scripts read and change single fields
(state, fence, lease) without decoding and re-encoding the whole record, and
every value stays a string. Task ids are 63-bit integers, which a Lua number
(a double) cannot hold exactly, and Redis' ``cjson`` and ``cmsgpack`` decode
them into doubles; as hash fields they are never converted. Small hashes are
stored as listpacks, about as compact as an encoded blob. The field names are
:data:`northpole.tasks.redis_keys.FIELDS`; a None value is an absent field.
A field at its default is absent too (:data:`DEFAULTED`): a new task's record
is 9 fields, not 14, which is a tenth of the submit script's Redis time.
``dependencies`` is a comma-separated list of ids and ``metadata`` JSON text,
both absent when empty: the scripts never look inside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from northpole.tasks.model import Task, TaskEvent, TaskState

#: Hash field text -> TaskState.
STATES = {state.value: state for state in TaskState}


#: Where :func:`task_fields` puts the values the ``submit`` script reads (1-based, Lua):
#: the fixed head is always these 9 pairs in this order; optional pairs follow.
HEAD_FIELDS = ("i", "g", "y", "p", "r", "pa", "s", "c", "sk")

#: Fields left out of a record while they hold their default: attempts (``n``), retry
#: count (``rc``) and fence (``f``) while 0, the update (``u``) and available (``a``)
#: times while they equal the creation time. Every reader (:func:`task_from_hash`, the
#: scripts' ``load``) fills them in.
DEFAULTED = frozenset({"n", "rc", "f", "u", "a"})


def task_fields(task: Task, *, aging_ms: int) -> list[str]:  # noqa: C901 - flat on purpose
    """Return a task as the flat ``[field, value, ...]`` list of its hash.

    None fields are left out, and so are those at their :data:`DEFAULTED`. The
    first 9 pairs are :data:`HEAD_FIELDS` in that order (the ``submit`` script
    reads type, priority, state, created and sched_key by position); optional
    fields follow.
    """
    available = task.available_ms
    created = task.created_ms
    out = [
        "i",
        str(task.id),
        "g",
        str(task.gift_id),
        "y",
        task.task_type,
        "p",
        str(task.priority),
        "r",
        str(task.max_retries),
        "pa",
        str(task.partition),
        "s",
        task.state.value,
        "c",
        str(created),
        "sk",
        str(available - task.priority * aging_ms),  # scheduler.schedule_key
    ]
    if available != created:
        out += ("a", str(available))
    if task.updated_ms != created:
        out += ("u", str(task.updated_ms))
    if task.attempts:
        out += ("n", str(task.attempts))
    if task.retry_count:
        out += ("rc", str(task.retry_count))
    if task.fence:
        out += ("f", str(task.fence))
    if task.dependencies:
        out += ("d", ",".join(map(str, task.dependencies)))
    if task.deadline_ms is not None:
        out += ("dl", str(task.deadline_ms))
    if task.metadata:
        out += ("m", orjson.dumps(task.metadata).decode())
    if task.idempotency_key is not None:
        out += ("k", task.idempotency_key)
    if task.worker_id is not None:
        out += ("w", task.worker_id)
    if task.lease_until_ms is not None:
        out += ("l", str(task.lease_until_ms))
    if task.started_ms is not None:
        out += ("st", str(task.started_ms))
    if task.finished_ms is not None:
        out += ("fi", str(task.finished_ms))
    if task.last_error is not None:
        out += ("e", task.last_error)
    if task.result is not None:
        out += ("re", task.result)
    return out


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def task_from_hash(fields: Mapping[str, str]) -> Task:
    """Build a Task from its hash fields (as HGETALL returns them; see :data:`DEFAULTED`)."""
    deps = fields.get("d")
    meta = fields.get("m")
    created = fields["c"]
    return Task(
        id=int(fields["i"]),
        gift_id=int(fields["g"]),
        task_type=fields["y"],
        priority=int(fields["p"]),
        dependencies=tuple(int(d) for d in deps.split(",")) if deps else (),
        max_retries=int(fields["r"]),
        deadline_ms=_int(fields.get("dl")),
        metadata=dict(orjson.loads(meta)) if meta else {},
        idempotency_key=fields.get("k"),
        partition=int(fields["pa"]),
        state=STATES[fields["s"]],
        created_ms=int(created),
        updated_ms=int(fields.get("u", created)),
        available_ms=int(fields.get("a", created)),
        attempts=int(fields.get("n", 0)),
        retry_count=int(fields.get("rc", 0)),
        worker_id=fields.get("w"),
        lease_until_ms=_int(fields.get("l")),
        fence=int(fields.get("f", 0)),
        started_ms=_int(fields.get("st")),
        finished_ms=_int(fields.get("fi")),
        last_error=fields.get("e"),
        result=fields.get("re"),
    )


def task_from_flat(flat: Sequence[str]) -> Task:
    """Build a Task from a script's flat ``[field, value, ...]`` reply."""
    it = iter(flat)
    return task_from_hash(dict(zip(it, it, strict=True)))


def event_from_reply(item: Sequence[Any]) -> TaskEvent:
    """Build a TaskEvent from a script's ``[id, gift, type, old, new, at, reason, attempt,
    started]`` item (empty strings for None)."""
    task_id, gift_id, task_type, old, new, at_ms, reason, attempt, started = item
    return TaskEvent(
        task_id=int(task_id),
        gift_id=int(gift_id),
        task_type=task_type,
        old_state=STATES[old] if old else None,
        new_state=STATES[new],
        at_ms=int(at_ms),
        reason=reason or None,
        attempt=int(attempt),
        started_ms=int(started) if started else None,
    )


def events_from_reply(items: Sequence[Sequence[Any]]) -> list[TaskEvent]:
    """Build the events of a script reply."""
    return [event_from_reply(item) for item in items]


def completed_events(task_id: int, reply: Sequence[str], at_ms: int) -> list[TaskEvent]:
    """The events of one ``complete`` script result ``["ok", gift, type, attempt, started,
    was assigned]``: ASSIGNED -> IN_PROGRESS first if it was assigned, then -> COMPLETED."""
    _, gift, task_type, attempt, started, was_assigned = reply
    gift_id, n, started_ms = int(gift), int(attempt), int(started)
    done = TaskEvent(
        task_id,
        gift_id,
        task_type,
        TaskState.IN_PROGRESS,
        TaskState.COMPLETED,
        at_ms,
        None,
        n,
        started_ms,
    )
    if was_assigned == "0":
        return [done]
    start = TaskEvent(
        task_id,
        gift_id,
        task_type,
        TaskState.ASSIGNED,
        TaskState.IN_PROGRESS,
        at_ms,
        None,
        n,
        started_ms,
    )
    return [start, done]


def depth_key(field: str) -> tuple[TaskState, int, str]:
    """Split a ``depth`` hash field ``"<state>|<priority>|<type>"``."""
    state, priority, task_type = field.split("|", 2)
    return STATES[state], int(priority), task_type
