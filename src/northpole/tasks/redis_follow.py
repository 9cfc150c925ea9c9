"""Cross-partition follow-ups of the Redis task store: the outbox and how it is applied.

A script that ends a task whose dependent lives in another partition cannot
touch that partition (another slot, perhaps another node). It records a
follow-up in its own partition's ``outbox`` hash instead, in the same script,
and returns it; the store then runs the ``apply`` script on the dependent's
partition and deletes the entry. Applying is idempotent, so a follow-up that
is applied twice (by the writer and by a sweeper after ``outbox_grace_ms``)
changes nothing more. A follow-up is the tuple ``(source partition, kind,
target partition, child id, parent id)``; kind ``r`` releases the child (the
parent COMPLETED), ``f`` fails it with ``dependency_failed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from northpole.tasks.model import TaskEvent
from northpole.tasks.redis_codec import events_from_reply
from northpole.tasks.redis_keys import Keys
from northpole.tasks.redis_scripts import Call, ScriptRunner

#: (source partition, kind, target partition, child id, parent id).
FollowUp = tuple[int, str, int, str, str]


def follow_items(source: int, owed: Iterable[Sequence[Any]]) -> list[FollowUp]:
    """Turn a script's ``[kind, target, child, parent]`` items into follow-ups from ``source``."""
    return [(source, kind, int(target), child, parent) for kind, target, child, parent in owed]


def chunks(flat: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    """Split a flat reply into tuples of ``size``."""
    return [tuple(flat[i : i + size]) for i in range(0, len(flat), size)]


def outbox_field(item: FollowUp) -> str:
    """The ``outbox`` hash field of a follow-up: ``"<kind>|<target>|<child>|<parent>"``."""
    _, kind, target, child, parent = item
    return f"{kind}|{target}|{child}|{parent}"


async def record(runner: ScriptRunner, keys: Keys, items: Sequence[FollowUp], now_ms: int) -> None:
    """Write follow-ups found outside a script into their source partitions' outboxes."""
    await runner.commands(
        [("HSET", keys.outbox(item[0]), outbox_field(item), now_ms) for item in items],
        write=True,
    )


async def apply_all(
    runner: ScriptRunner,
    keys: Keys,
    items: Sequence[FollowUp],
    now_ms: int,
    *,
    outbox: bool,
    events: list[TaskEvent],
) -> None:
    """Apply follow-ups, and those they cause, until none is left; append the events.

    Args:
        runner: The script runner.
        keys: The store's key names.
        items: The follow-ups.
        now_ms: Current time.
        outbox: Whether ``items`` are recorded in their sources' outboxes (then their
            entries are deleted once applied; follow-ups caused by ``apply`` always are).
        events: Where the events of the applied changes go.
    """
    while items:
        by_target: dict[int, list[str]] = {}
        for _, kind, target, child, parent in items:
            by_target.setdefault(target, []).extend((kind, child, parent))
        calls = [
            Call("apply", (keys.partition(target),), (target, now_ms, len(args) // 3, *args))
            for target, args in sorted(by_target.items())
        ]
        replies = await runner.run(calls)
        if outbox:
            await runner.commands(
                [("HDEL", keys.outbox(item[0]), outbox_field(item)) for item in items],
                write=True,
            )
        nxt: list[FollowUp] = []
        for call, (evs, more) in zip(calls, replies, strict=True):
            events += events_from_reply(evs)
            nxt += follow_items(int(call.args[0]), more)
        items, outbox = nxt, True
