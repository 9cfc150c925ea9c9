"""Unit tests of the Redis store's pure planning (submit twins, doomed tasks, claim plans)
and of the call coalescer."""

from __future__ import annotations

import asyncio

from northpole.tasks.batch import doomed, split_twins
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_batch import Coalescer
from northpole.tasks.redis_plan import Peek, plan_claim

S = TaskState


def _task(task_id: int, *, key: str | None = None, deps: tuple[int, ...] = ()) -> Task:
    return Task(
        id=task_id,
        gift_id=task_id,
        task_type="wrap",
        priority=0,
        dependencies=deps,
        max_retries=3,
        deadline_ms=None,
        metadata={},
        idempotency_key=key,
        partition=0,
        state=S.PENDING,
        created_ms=0,
        updated_ms=0,
        available_ms=0,
    )


def test_a_batch_without_keys_is_all_new() -> None:
    """Without idempotency keys every task is new and nothing is a twin."""
    batch = [_task(1), _task(2)]
    twins = split_twins(batch, {})
    assert (twins.new, twins.twin_of, twins.stored) == (batch, {}, {})


def test_stored_and_repeated_keys_become_twins_and_dependencies_follow_them() -> None:
    """A stored key and a key repeated in the batch are twins; dependents point at the twin."""
    stored = _task(9, key="a")
    batch = [_task(1, key="a"), _task(2, key="b"), _task(3, key="b"), _task(4, deps=(1, 3))]
    twins = split_twins(batch, {"a": stored})
    assert [t.id for t in twins.new] == [2, 4]
    assert twins.twin_of == {1: 9, 3: 2}
    assert twins.new[1].dependencies == (9, 2)
    assert twins.stored == {9: stored}


def test_doomed_follows_failed_dependencies_transitively_in_cause_order() -> None:
    """Tasks depending on a FAILED task, and their dependents in the batch, are doomed."""
    new = [_task(1, deps=(100,)), _task(2, deps=(1,)), _task(3, deps=(101,)), _task(4, deps=(2,))]
    found = doomed(new, {1, 2, 3, 4}, {100: S.EXPIRED, 101: S.COMPLETED})
    assert found == [(1, 100), (2, 1), (4, 2)]


def test_a_claim_takes_the_own_heads_in_order_then_more_from_the_deepest_own() -> None:
    """Own partitions' heads merge in key order; beyond the heads the deepest own gives more."""
    peeks = {
        0: Peek(3, ((5, 10), (9, 11))),
        1: Peek(1, ((7, 20),)),
        2: Peek(8, ((1, 30),)),
    }
    assert plan_claim(peeks, [0, 1], 3) == [(0, 2), (1, 1)]
    assert dict(plan_claim(peeks, [0, 1], 4, steal=False)) == {0: 3, 1: 1}


def test_an_idle_worker_steals_deepest_first() -> None:
    """With nothing of its own, a worker takes from the deepest other partition, then the next."""
    peeks = {0: Peek(0, ()), 1: Peek(2, ((1, 1),)), 2: Peek(5, ((2, 2),))}
    assert plan_claim(peeks, [0], 4) == [(2, 4)]
    assert plan_claim(peeks, [0], 6) == [(2, 5), (1, 1)]
    assert plan_claim(peeks, [0], 6, steal=False) == []


async def test_calls_in_one_turn_share_one_batch() -> None:
    """Items submitted together reach the batch function once, each getting its own result."""
    seen: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * i for i in items]

    coalescer: Coalescer[int] = Coalescer(double)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)))
    assert results == [0, 2, 4, 6, 8]
    assert seen == [[0, 1, 2, 3, 4]]


async def test_items_queued_while_a_batch_runs_go_in_the_next_one() -> None:
    """A call made while a batch is in flight waits for it and goes with the next batch."""
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        seen.append(list(items))
        await gate.wait()
        return items

    coalescer: Coalescer[int] = Coalescer(slow)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(coalescer.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == 1 and [await f for f in later] == [2, 3]
    assert seen == [[1], [2, 3]]


async def test_a_failing_batch_fails_each_of_its_items_and_not_the_next() -> None:
    """An exception of the batch function reaches every caller of that batch only."""
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("down")
        return items

    coalescer: Coalescer[int] = Coalescer(flaky)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await coalescer.submit(7) == 7
    await coalescer.drain()
