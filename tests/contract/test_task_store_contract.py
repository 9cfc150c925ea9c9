"""The TaskStore contract (see northpole.tasks.store), run against every implementation."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from northpole.core.clock import FakeClock
from northpole.core.errors import ConfigurationError, Conflict, InvalidInput, Unavailable
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import partition_of
from northpole.tasks.sqlite_store import SCHEMA_VERSION, SqliteTaskStore
from northpole.tasks.store import (
    Claim,
    CompleteRequest,
    DependencyCycle,
    Heartbeat,
    TaskNotFound,
    TaskStore,
    UnknownDependency,
)
from northpole.tasks.transitions import IllegalTransition, StaleFence

S = TaskState
LEASE_MS = 1_000
MakeTask = Callable[..., Task]


def _claim(
    worker: str = "w1", *, limit: int = 1, task_types: frozenset[str] = frozenset()
) -> Claim:
    return Claim(worker_id=worker, group="g", task_types=task_types, limit=limit, lease_ms=LEASE_MS)


async def _claim_one(store: TaskStore, clock: FakeClock, worker: str = "w1") -> Task:
    tasks, _ = await store.claim(_claim(worker), now_ms=clock.now_ms())
    assert len(tasks) == 1
    return tasks[0]


async def _fail(
    store: TaskStore, task: Task, clock: FakeClock, *, retry: bool = True
) -> list[TaskEvent]:
    assert task.worker_id is not None
    return await store.fail(
        task.id,
        worker_id=task.worker_id,
        fence=task.fence,
        reason=Reason.HANDLER_ERROR,
        message="boom",
        retry=retry,
        delay_ms=None,
        now_ms=clock.now_ms(),
    )


async def _complete(store: TaskStore, task: Task, clock: FakeClock) -> list[TaskEvent]:
    assert task.worker_id is not None
    return await store.complete(
        task.id, worker_id=task.worker_id, fence=task.fence, result="ok", now_ms=clock.now_ms()
    )


def _transitions(events: list[TaskEvent]) -> list[tuple[int, S | None, S]]:
    return [(e.task_id, e.old_state, e.new_state) for e in events]


def _gifts_in(partition: int, count: int, partitions: int) -> list[int]:
    """Return ``count`` gift ids that land in ``partition`` of ``partitions``."""
    found = (g for g in itertools.count(1) if partition_of(g, partitions) == partition)
    return list(itertools.islice(found, count))


# -- submit and get --------------------------------------------------------------------------


async def test_submit_then_get_round_trips_every_field(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A stored task reads back equal to what was submitted, field by field."""
    dep = make_task()
    task = make_task(
        gift_id=2**62 + 5,
        task_type="build ✓",
        priority=-(2**31),
        dependencies=(dep.id,),
        max_retries=7,
        deadline_ms=clock.now_ms() + 60_000,
        metadata={"colour": "red", "note": 'ü / "quoted"'},
        idempotency_key="key-1",
    )
    stored, _ = await store.submit([dep, task], now_ms=clock.now_ms())
    assert stored == [dep, task]
    assert await store.get(task.id) == task
    assert await store.get(dep.id) == dep


async def test_get_of_an_unknown_id_raises_task_not_found(store: TaskStore) -> None:
    """get() of an id never stored raises TaskNotFound naming the id."""
    with pytest.raises(TaskNotFound) as info:
        await store.get(42)
    assert info.value.task_id == 42


async def test_submit_emits_one_pending_event_per_task(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Each new task yields one None -> PENDING event stamped with now_ms."""
    tasks = [make_task() for _ in range(3)]
    _, events = await store.submit(tasks, now_ms=clock.now_ms())
    assert _transitions(events) == [(t.id, None, S.PENDING) for t in tasks]
    assert all(e.at_ms == clock.now_ms() and e.attempt == 0 for e in events)


async def test_a_bad_dependency_in_a_batch_stores_none_of_it(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A batch whose fifth task names an unknown dependency stores none of its ten tasks."""
    batch = [make_task() for _ in range(10)]
    batch[4] = make_task(dependencies=(999_999,))
    with pytest.raises(UnknownDependency) as info:
        await store.submit(batch, now_ms=clock.now_ms())
    assert info.value.field == "dependencies"
    for task in batch:
        with pytest.raises(TaskNotFound):
            await store.get(task.id)


async def test_an_idempotency_key_already_stored_returns_the_stored_twin(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Submitting a known idempotency key again returns the stored task and emits nothing."""
    first = make_task(idempotency_key="gift-7-wrap", metadata={"v": "1"})
    await store.submit([first], now_ms=clock.now_ms())
    clock.advance(10)
    again = make_task(idempotency_key="gift-7-wrap", metadata={"v": "2"})
    fresh = make_task()
    stored, events = await store.submit([again, fresh], now_ms=clock.now_ms())
    assert stored == [first, fresh]
    assert _transitions(events) == [(fresh.id, None, S.PENDING)]
    with pytest.raises(TaskNotFound):
        await store.get(again.id)


async def test_a_key_repeated_within_one_batch_stores_one_task(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Two tasks of one batch sharing a key store the first; the second is its twin."""
    a = make_task(idempotency_key="k")
    b = make_task(idempotency_key="k")
    stored, events = await store.submit([a, b], now_ms=clock.now_ms())
    assert stored == [a, a]
    assert len(events) == 1


async def test_a_batch_of_known_keys_only_returns_the_stored_tasks(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Re-submitting a whole batch by its keys returns the stored tasks and stores nothing."""
    batch = [make_task(idempotency_key=f"k{i}") for i in range(3)]
    await store.submit(batch, now_ms=clock.now_ms())
    retry = [make_task(idempotency_key=f"k{i}") for i in range(3)]
    stored, events = await store.submit(retry, now_ms=clock.now_ms())
    assert (stored, events) == (batch, [])


async def test_a_dependency_on_a_twin_means_the_stored_task(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A new task depending on a batch task replaced by its stored twin depends on the twin."""
    parent = make_task(idempotency_key="parent")
    await store.submit([parent], now_ms=clock.now_ms())
    parent_again = make_task(idempotency_key="parent")
    child = make_task(dependencies=(parent_again.id,))
    stored, _ = await store.submit([parent_again, child], now_ms=clock.now_ms())
    assert stored[0] == parent
    assert stored[1].dependencies == (parent.id,)
    assert (await store.get(child.id)).dependencies == (parent.id,)
    await _complete(store, await _claim_one(store, clock), clock)
    assert (await _claim_one(store, clock)).id == child.id


async def test_an_unknown_dependency_is_rejected(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A dependency naming no stored task and no task of the batch is rejected."""
    with pytest.raises(UnknownDependency) as info:
        await store.submit([make_task(dependencies=(123,))], now_ms=clock.now_ms())
    assert info.value.field == "dependencies"
    assert "123" in info.value.message


async def test_a_dependency_cycle_in_a_batch_is_rejected(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Tasks of one batch that depend on each other in a ring are rejected with the cycle."""
    a, b, c = (make_task(task_id=i) for i in (1, 2, 3))
    ring = [
        make_task(task_id=a.id, dependencies=(c.id,)),
        make_task(task_id=b.id, dependencies=(a.id,)),
        make_task(task_id=c.id, dependencies=(b.id,)),
    ]
    with pytest.raises(DependencyCycle) as info:
        await store.submit(ring, now_ms=clock.now_ms())
    assert info.value.field == "dependencies"
    assert set(info.value.cycle) == {1, 2, 3}
    with pytest.raises(TaskNotFound):
        await store.get(1)


async def test_dependencies_within_one_batch_are_accepted(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A task may depend on a task submitted in the same batch, in either order."""
    parent = make_task()
    child = make_task(dependencies=(parent.id,))
    stored, _ = await store.submit([child, parent], now_ms=clock.now_ms())
    assert [t.state for t in stored] == [S.PENDING, S.PENDING]


async def test_a_duplicate_task_id_is_a_conflict(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A task id already stored, or twice in one batch, is a Conflict and stores nothing."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    other = make_task()
    with pytest.raises(Conflict):
        await store.submit([other, make_task(task_id=task.id)], now_ms=clock.now_ms())
    with pytest.raises(Conflict):
        await store.submit([other, other], now_ms=clock.now_ms())
    with pytest.raises(TaskNotFound):
        await store.get(other.id)


async def test_a_task_whose_dependency_already_failed_is_stored_failed(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Depending on a FAILED task stores the new task FAILED (dependency_failed), with events."""
    dead = make_task(max_retries=0)
    await store.submit([dead], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock, retry=False)
    child = make_task(dependencies=(dead.id,))
    grandchild = make_task(dependencies=(child.id,))
    stored, events = await store.submit([child, grandchild], now_ms=clock.now_ms())
    assert [t.state for t in stored] == [S.FAILED, S.FAILED]
    assert all(t.last_error and t.last_error.startswith("dependency_failed") for t in stored)
    assert _transitions(events) == [
        (child.id, None, S.PENDING),
        (grandchild.id, None, S.PENDING),
        (child.id, S.PENDING, S.FAILED),
        (grandchild.id, S.PENDING, S.FAILED),
    ]
    assert {e.reason for e in events[2:]} == {Reason.DEPENDENCY_FAILED.value}
    assert (await store.get(child.id)).state is S.FAILED


@pytest.mark.parametrize("with_errors", [False, True])
async def test_concurrent_submits_each_get_their_own_tasks_events_and_errors(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, with_errors: bool
) -> None:
    """Submits awaited together (a store may share round trips between them) answer each
    caller for its own batch: its tasks in order, its events only, its error only."""
    dead = make_task(max_retries=0)
    await store.submit([dead], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock, retry=False)
    taken = make_task()
    await store.submit([taken], now_ms=clock.now_ms())
    batches = [[make_task() for _ in range(1 + k % 3)] for k in range(12)]
    batches[8] = [make_task(dependencies=(dead.id,))]  # stored FAILED, with its event
    bad = {3, 5} if with_errors else set()
    if with_errors:
        batches[3] = [make_task(), make_task(task_id=taken.id)]  # clashes: a Conflict
        batches[5] = [make_task(dependencies=(999_999,))]  # unknown: UnknownDependency
    results = await asyncio.gather(
        *(store.submit(b, now_ms=clock.now_ms()) for b in batches), return_exceptions=True
    )
    for k, (batch, result) in enumerate(zip(batches, results, strict=True)):
        if k in bad:
            assert isinstance(result, Conflict if k == 3 else UnknownDependency)
            with pytest.raises(TaskNotFound):
                await store.get(batch[0].id)
            continue
        assert not isinstance(result, BaseException)
        stored, events = result
        assert [t.id for t in stored] == [t.id for t in batch]
        if k == 8:
            assert stored[0].state is S.FAILED
            assert _transitions(events) == [
                (batch[0].id, None, S.PENDING),
                (batch[0].id, S.PENDING, S.FAILED),
            ]
        else:
            assert _transitions(events) == [(t.id, None, S.PENDING) for t in batch]
            assert [(await store.get(t.id)).state for t in batch] == [S.PENDING] * len(batch)


# -- claim -------------------------------------------------------------------------------------


async def test_claim_assigns_under_a_lease_and_a_new_fence(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A claimed task is ASSIGNED to the worker with attempts 1, fence 1 and a lease."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    claimed, events = await store.claim(_claim("w1", limit=5), now_ms=clock.now_ms())
    assert [t.id for t in claimed] == [task.id]
    got = claimed[0]
    assert (got.state, got.worker_id, got.attempts, got.fence) == (S.ASSIGNED, "w1", 1, 1)
    assert got.lease_until_ms == clock.now_ms() + LEASE_MS
    assert _transitions(events) == [(task.id, S.PENDING, S.ASSIGNED)]
    assert await store.get(task.id) == got
    assert (await store.claim(_claim("w2"), now_ms=clock.now_ms()))[0] == []


async def test_claims_from_two_store_objects_never_share_a_task(
    backend: Any, store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Two store objects on one backing store, claiming at once, hand out each task once."""
    await store.submit([make_task() for _ in range(500)], now_ms=clock.now_ms())
    other = await backend.open()

    async def drain(s: TaskStore, worker: str) -> list[int]:
        got: list[int] = []
        while batch := (await s.claim(_claim(worker, limit=25), now_ms=clock.now_ms()))[0]:
            got.extend(t.id for t in batch)
        return got

    a, b = await asyncio.gather(drain(store, "w1"), drain(other, "w2"))
    assert len(a) + len(b) == 500
    assert len(set(a) | set(b)) == 500


async def test_concurrent_claims_on_one_store_never_share_a_task(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Many claims awaited together on one store object hand out each task once."""
    await store.submit([make_task() for _ in range(500)], now_ms=clock.now_ms())
    results = await asyncio.gather(
        *(store.claim(_claim(f"w{i % 7}", limit=3), now_ms=clock.now_ms()) for i in range(200))
    )
    ids = [t.id for tasks, _ in results for t in tasks]
    assert len(ids) == 500
    assert len(set(ids)) == 500


async def test_claim_takes_higher_priority_first(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Among tasks queued at the same time, higher priority is claimed first."""
    low, high, mid = make_task(priority=1), make_task(priority=9), make_task(priority=5)
    await store.submit([low, high, mid], now_ms=clock.now_ms())
    claimed, _ = await store.claim(_claim(limit=3), now_ms=clock.now_ms())
    assert [t.id for t in claimed] == [high.id, mid.id, low.id]


async def test_aging_lets_an_old_low_priority_task_beat_a_new_high_priority_one(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """A task of priority p waiting longer than (q - p) * aging_ms beats a new task of q."""
    old = make_task(priority=1)
    await store.submit([old], now_ms=clock.now_ms())
    clock.advance((4 - 1) * config.aging_ms - 1)
    young_close = make_task(priority=4)
    await store.submit([young_close], now_ms=clock.now_ms())
    first, _ = await store.claim(_claim(), now_ms=clock.now_ms())
    assert [t.id for t in first] == [young_close.id]  # within the gap: priority wins
    clock.advance(2)
    young_far = make_task(priority=4)
    await store.submit([young_far], now_ms=clock.now_ms())
    second, _ = await store.claim(_claim(), now_ms=clock.now_ms())
    assert [t.id for t in second] == [old.id]  # past the gap: age wins


async def test_a_low_priority_task_is_not_starved_by_a_stream_of_high_ones(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """With a high-priority task submitted every step, the low one is claimed within the bound."""
    start = clock.now_ms()
    low = make_task(priority=0)
    await store.submit([low, make_task(priority=3)], now_ms=start)
    step = config.aging_ms // 4
    while True:
        clock.advance(step)
        await store.submit([make_task(priority=3)], now_ms=clock.now_ms())
        claimed = await _claim_one(store, clock)
        await _complete(store, claimed, clock)
        if claimed.id == low.id:
            break
        assert clock.now_ms() - start <= 3 * config.aging_ms + step, "the low-priority task starved"


async def test_claim_only_hands_out_the_worker_s_task_types(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A worker declaring task types gets only those; one declaring none gets any type."""
    wrap, load = make_task(task_type="wrap"), make_task(task_type="load", priority=5)
    await store.submit([wrap, load], now_ms=clock.now_ms())
    got, _ = await store.claim(
        _claim("w1", limit=5, task_types=frozenset({"wrap", "paint"})), now_ms=clock.now_ms()
    )
    assert [t.id for t in got] == [wrap.id]
    got, _ = await store.claim(_claim("w2", limit=5), now_ms=clock.now_ms())
    assert [t.id for t in got] == [load.id]


async def test_dependencies_gate_claiming_until_all_are_completed(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A task is claimable only once every one of its dependencies is COMPLETED."""
    a, b = make_task(), make_task()
    child = make_task(dependencies=(a.id, b.id), priority=100)
    await store.submit([a, b, child], now_ms=clock.now_ms())
    first, _ = await store.claim(_claim(limit=10), now_ms=clock.now_ms())
    assert {t.id for t in first} == {a.id, b.id}
    await _complete(store, first[0], clock)
    assert (await store.claim(_claim(limit=10), now_ms=clock.now_ms()))[0] == []
    await _complete(store, first[1], clock)
    released, _ = await store.claim(_claim(limit=10), now_ms=clock.now_ms())
    assert [t.id for t in released] == [child.id]


async def test_a_dependency_completed_before_submit_does_not_gate(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A task submitted after its dependency COMPLETED is claimable at once."""
    done = make_task()
    await store.submit([done], now_ms=clock.now_ms())
    await _complete(store, await _claim_one(store, clock), clock)
    child = make_task(dependencies=(done.id,))
    await store.submit([child], now_ms=clock.now_ms())
    assert (await _claim_one(store, clock)).id == child.id


async def test_a_final_failure_cascades_through_a_chain_of_dependents(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """When the first of a chain of three fails finally, the other two fail dependency_failed."""
    a = make_task(max_retries=0)
    b = make_task(dependencies=(a.id,))
    c = make_task(dependencies=(b.id,))
    await store.submit([a, b, c], now_ms=clock.now_ms())
    events = await _fail(store, await _claim_one(store, clock), clock)
    assert _transitions(events) == [
        (a.id, S.ASSIGNED, S.FAILED),
        (b.id, S.PENDING, S.FAILED),
        (c.id, S.PENDING, S.FAILED),
    ]
    assert events[0].reason == Reason.RETRIES_EXHAUSTED.value
    assert [e.reason for e in events[1:]] == [Reason.DEPENDENCY_FAILED.value] * 2
    for task in (b, c):
        stored = await store.get(task.id)
        assert stored.state is S.FAILED
        assert stored.last_error is not None and stored.last_error.startswith("dependency_failed")


# -- fencing, retries, redrive, cancel ------------------------------------------------------------


async def test_an_old_fence_cannot_complete_after_the_task_was_reclaimed(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """After lease expiry and a new claim, the first worker's complete is a StaleFence."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    first = await _claim_one(store, clock, "w1")
    clock.advance(LEASE_MS + 1)
    await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
    clock.set_ms((await store.get(task.id)).available_ms)
    second = await _claim_one(store, clock, "w2")
    assert second.fence == first.fence + 1
    with pytest.raises(StaleFence) as info:
        await _complete(store, first, clock)
    assert info.value.field == "fence"
    events = await _complete(store, second, clock)
    assert events[-1].new_state is S.COMPLETED
    with pytest.raises(StaleFence):
        await _complete(store, second, clock)
    done = await store.get(task.id)
    assert (done.state, done.result, done.fence, done.worker_id) == (S.COMPLETED, "ok", 2, None)


async def test_complete_from_assigned_passes_through_in_progress(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Completing an ASSIGNED task emits ASSIGNED -> IN_PROGRESS -> COMPLETED."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    events = await _complete(store, await _claim_one(store, clock), clock)
    assert _transitions(events) == [
        (task.id, S.ASSIGNED, S.IN_PROGRESS),
        (task.id, S.IN_PROGRESS, S.COMPLETED),
    ]


async def test_complete_many_completes_each_item_and_returns_its_events(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """complete_many completes every held task in one call, answering each one's events."""
    tasks = [make_task() for _ in range(5)]
    await store.submit(tasks, now_ms=clock.now_ms())
    held, _ = await store.claim(_claim(limit=5), now_ms=clock.now_ms())
    assert len(held) == 5
    outcomes = await store.complete_many(
        [CompleteRequest(t.id, "w1", t.fence, f"r{t.id}") for t in held], now_ms=clock.now_ms()
    )
    for task, outcome in zip(held, outcomes, strict=True):
        assert isinstance(outcome, list)
        assert _transitions(outcome) == [
            (task.id, S.ASSIGNED, S.IN_PROGRESS),
            (task.id, S.IN_PROGRESS, S.COMPLETED),
        ]
        done = await store.get(task.id)
        assert (done.state, done.result, done.worker_id) == (S.COMPLETED, f"r{task.id}", None)


async def test_complete_many_answers_refused_items_with_their_errors(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """An unknown task and a stale fence come back as errors; the other items complete."""
    a, b = make_task(), make_task()
    child = make_task(dependencies=(a.id,))
    await store.submit([a, b, child], now_ms=clock.now_ms())
    held, _ = await store.claim(_claim(limit=2), now_ms=clock.now_ms())
    by_id = {t.id: t for t in held}
    outcomes = await store.complete_many(
        [
            CompleteRequest(a.id, "w1", by_id[a.id].fence, None),
            CompleteRequest(987_654_321, "w1", 1, None),
            CompleteRequest(b.id, "w1", by_id[b.id].fence + 7, None),
            CompleteRequest(a.id, "w1", by_id[a.id].fence, None),
        ],
        now_ms=clock.now_ms(),
    )
    assert isinstance(outcomes[0], list) and outcomes[0][-1].new_state is S.COMPLETED
    assert isinstance(outcomes[1], TaskNotFound)
    assert isinstance(outcomes[2], StaleFence)
    assert isinstance(outcomes[3], StaleFence)  # the same task again: already COMPLETED
    assert (await store.get(b.id)).state is S.ASSIGNED
    released, _ = await store.claim(_claim(limit=5), now_ms=clock.now_ms())
    assert [t.id for t in released] == [child.id]


async def test_wait_for_work_returns_by_its_timeout_when_nothing_happens(
    store: TaskStore,
) -> None:
    """wait_for_work answers at once for a negative count and within its timeout otherwise."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen = await store.wait_for_work(-1, 0.0)
    assert seen >= 0
    assert await store.wait_for_work(seen, 0.2) >= seen
    assert loop.time() - started < 2.0


async def test_a_failed_attempt_backs_off_within_the_policy_bounds(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """A retried failure waits a jittered backoff: unclaimable before it, claimable after."""
    task = make_task(max_retries=5)
    await store.submit([task], now_ms=clock.now_ms())
    for retry_number in (1, 2, 3):
        held = await _claim_one(store, clock)
        failed_at = clock.now_ms()
        events = await _fail(store, held, clock)
        assert _transitions(events) == [(task.id, S.ASSIGNED, S.PENDING)]
        assert events[0].reason == Reason.HANDLER_ERROR.value
        stored = await store.get(task.id)
        ceiling = config.policy.ceiling_ms(retry_number)
        assert failed_at + ceiling // 2 <= stored.available_ms <= failed_at + ceiling
        assert stored.retry_count == retry_number
        assert stored.last_error == "handler_error: boom"
        clock.set_ms(stored.available_ms - 1)
        assert (await store.claim(_claim(), now_ms=clock.now_ms()))[0] == []
        clock.advance(1)


async def test_an_explicit_delay_overrides_the_policy(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """fail(delay_ms=...) makes the task available exactly that long after now."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    held = await _claim_one(store, clock)
    await store.fail(
        task.id,
        worker_id="w1",
        fence=held.fence,
        reason=Reason.HANDLER_ERROR,
        message="later",
        retry=True,
        delay_ms=12_345,
        now_ms=clock.now_ms(),
    )
    assert (await store.get(task.id)).available_ms == clock.now_ms() + 12_345


async def test_exhausted_retries_fail_the_task_with_retries_exhausted(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """The failure after max_retries retries makes the task FAILED, reason retries_exhausted."""
    task = make_task(max_retries=1)
    await store.submit([task], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock)
    clock.set_ms((await store.get(task.id)).available_ms)
    events = await _fail(store, await _claim_one(store, clock), clock)
    assert _transitions(events) == [(task.id, S.ASSIGNED, S.FAILED)]
    assert events[0].reason == Reason.RETRIES_EXHAUSTED.value
    stored = await store.get(task.id)
    assert (stored.state, stored.attempts, stored.retry_count) == (S.FAILED, 2, 1)
    assert stored.finished_ms == clock.now_ms()


async def test_a_failure_without_retry_fails_at_once(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """fail(retry=False) makes the task FAILED with the given reason despite retries left."""
    task = make_task(max_retries=5)
    await store.submit([task], now_ms=clock.now_ms())
    events = await _fail(store, await _claim_one(store, clock), clock, retry=False)
    assert events[0].new_state is S.FAILED
    assert events[0].reason == Reason.HANDLER_ERROR.value


async def test_fail_needs_the_holder_s_fence(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """fail() by another worker, or with another fence, is a StaleFence and changes nothing."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    held = await _claim_one(store, clock)
    for worker, fence in (("w2", held.fence), ("w1", held.fence + 1)):
        with pytest.raises(StaleFence):
            await store.fail(
                task.id,
                worker_id=worker,
                fence=fence,
                reason=Reason.HANDLER_ERROR,
                message="",
                retry=True,
                delay_ms=None,
                now_ms=clock.now_ms(),
            )
    assert await store.get(task.id) == held


async def test_redrive_puts_a_failed_task_back_with_a_fresh_budget(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A re-driven FAILED task is PENDING again with retry_count 0; its dependents stay FAILED."""
    task = make_task(max_retries=0)
    child = make_task(dependencies=(task.id,))
    await store.submit([task, child], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock)
    clock.advance(5_000)
    events = await store.redrive(task.id, now_ms=clock.now_ms())
    assert _transitions(events) == [(task.id, S.FAILED, S.PENDING)]
    stored = await store.get(task.id)
    assert (stored.state, stored.retry_count, stored.available_ms) == (
        S.PENDING,
        0,
        clock.now_ms(),
    )
    assert (await store.get(child.id)).state is S.FAILED
    assert (await _claim_one(store, clock)).id == task.id
    with pytest.raises(IllegalTransition):
        await store.redrive(task.id, now_ms=clock.now_ms())


async def test_redriving_the_parent_then_the_child_runs_both(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Re-driving a failed parent and then its cascaded child lets the child run after it."""
    parent = make_task(max_retries=0)
    child = make_task(dependencies=(parent.id,))
    await store.submit([parent, child], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock)
    await store.redrive(parent.id, now_ms=clock.now_ms())
    await store.redrive(child.id, now_ms=clock.now_ms())
    assert (await store.get(child.id)).state is S.PENDING
    await _complete(store, await _claim_one(store, clock), clock)
    assert (await _claim_one(store, clock)).id == child.id


async def test_redriving_a_child_whose_parent_is_still_failed_fails_it_again(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A re-driven task with a dependency still FAILED goes PENDING and at once FAILED again."""
    parent = make_task(max_retries=0)
    child = make_task(dependencies=(parent.id,))
    await store.submit([parent, child], now_ms=clock.now_ms())
    await _fail(store, await _claim_one(store, clock), clock)
    events = await store.redrive(child.id, now_ms=clock.now_ms())
    assert _transitions(events) == [
        (child.id, S.FAILED, S.PENDING),
        (child.id, S.PENDING, S.FAILED),
    ]
    assert events[1].reason == Reason.DEPENDENCY_FAILED.value
    assert (await store.get(child.id)).state is S.FAILED


async def test_cancel_fails_a_pending_task_and_its_dependents(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Cancelling a PENDING task fails it (cancelled) and its dependents (dependency_failed)."""
    task = make_task()
    child = make_task(dependencies=(task.id,))
    await store.submit([task, child], now_ms=clock.now_ms())
    events = await store.cancel(task.id, now_ms=clock.now_ms())
    assert _transitions(events) == [(task.id, S.PENDING, S.FAILED), (child.id, S.PENDING, S.FAILED)]
    assert [e.reason for e in events] == ["cancelled", "dependency_failed"]
    assert (await store.claim(_claim(), now_ms=clock.now_ms()))[0] == []


async def test_a_cancelled_running_task_is_reported_by_the_holder_s_heartbeat(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Cancelling a running task fails it; the holder's next heartbeat lists it in cancel."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    held = await _claim_one(store, clock)
    events = await store.cancel(task.id, now_ms=clock.now_ms())
    assert _transitions(events) == [(task.id, S.ASSIGNED, S.FAILED)]
    answer = await store.heartbeat(
        Heartbeat(worker_id="w1", group="g", holding=((task.id, held.fence),)),
        now_ms=clock.now_ms(),
    )
    assert answer.cancel == (task.id,)
    with pytest.raises(StaleFence):
        await _complete(store, held, clock)


async def test_cancel_of_a_finished_task_is_an_illegal_transition(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A COMPLETED task cannot be cancelled; an unknown one is TaskNotFound."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    await _complete(store, await _claim_one(store, clock), clock)
    with pytest.raises(IllegalTransition):
        await store.cancel(task.id, now_ms=clock.now_ms())
    with pytest.raises(TaskNotFound):
        await store.cancel(7, now_ms=clock.now_ms())


async def test_a_failing_call_does_not_undo_concurrent_ones(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Calls awaited together are each all-or-nothing: one StaleFence leaves the others done."""
    tasks = [make_task() for _ in range(20)]
    await store.submit(tasks, now_ms=clock.now_ms())
    held, _ = await store.claim(_claim(limit=20), now_ms=clock.now_ms())
    calls = [
        store.complete(
            t.id, worker_id="w1", fence=t.fence + (i == 7), result=None, now_ms=clock.now_ms()
        )
        for i, t in enumerate(held)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [isinstance(r, StaleFence) for r in results] == [i == 7 for i in range(20)]
    states = Counter([(await store.get(t.id)).state for t in tasks])
    assert states == {S.COMPLETED: 19, S.ASSIGNED: 1}


# -- deadlines, leases, heartbeats, sweep ------------------------------------------------------


async def test_sweep_expires_pending_tasks_past_their_deadline(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A PENDING task past its deadline becomes EXPIRED, and its dependents fail."""
    task = make_task(deadline_ms=clock.now_ms() + 1_000)
    child = make_task(dependencies=(task.id,))
    keep = make_task(deadline_ms=clock.now_ms() + 1_001)
    await store.submit([task, child, keep], now_ms=clock.now_ms())
    clock.advance(1_000)
    events = await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
    assert _transitions(events) == [
        (task.id, S.PENDING, S.EXPIRED),
        (child.id, S.PENDING, S.FAILED),
    ]
    assert events[0].reason == Reason.DEADLINE_EXCEEDED.value
    assert (await store.get(keep.id)).state is S.PENDING


async def test_sweep_fails_running_tasks_past_their_deadline(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A running task past its deadline becomes FAILED with deadline_exceeded, no retry."""
    task = make_task(deadline_ms=clock.now_ms() + 500, max_retries=5)
    await store.submit([task], now_ms=clock.now_ms())
    held = await _claim_one(store, clock)
    clock.advance(600)
    events = await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
    assert _transitions(events) == [(task.id, S.ASSIGNED, S.FAILED)]
    assert events[0].reason == Reason.DEADLINE_EXCEEDED.value
    stored = await store.get(task.id)
    assert stored.last_error is not None and stored.last_error.startswith("deadline_exceeded")
    answer = await store.heartbeat(
        Heartbeat(worker_id="w1", group="g", holding=((task.id, held.fence),)),
        now_ms=clock.now_ms(),
    )
    assert answer.cancel == (task.id,)


async def test_sweep_turns_an_expired_lease_into_a_failed_attempt(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A lease that ran out puts the task back to PENDING, counting the attempt and the retry."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    await _claim_one(store, clock)
    clock.advance(LEASE_MS)
    assert await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000) == []
    clock.advance(1)
    events = await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
    assert _transitions(events) == [(task.id, S.ASSIGNED, S.PENDING)]
    assert events[0].reason == Reason.LEASE_EXPIRED.value
    stored = await store.get(task.id)
    assert (stored.attempts, stored.retry_count, stored.worker_id) == (1, 1, None)
    assert stored.last_error is not None and stored.last_error.startswith("lease_expired")
    assert clock.now_ms() + 500 <= stored.available_ms <= clock.now_ms() + 1_000


async def test_heartbeats_extend_leases_and_mark_started_tasks_in_progress(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A heartbeating worker keeps its tasks past the first lease; `started` ones go IN_PROGRESS."""
    a, b = make_task(), make_task()
    await store.submit([a, b], now_ms=clock.now_ms())
    held, _ = await store.claim(_claim(limit=2), now_ms=clock.now_ms())
    holding = tuple((t.id, t.fence) for t in held)
    beat = Heartbeat(
        worker_id="w1", group="g", holding=holding, started=holding[:1], lease_ms=LEASE_MS
    )
    clock.advance(800)
    answer = await store.heartbeat(beat, now_ms=clock.now_ms())
    assert _transitions(answer.events) == [(held[0].id, S.ASSIGNED, S.IN_PROGRESS)]
    assert answer.cancel == ()
    for _ in range(3):
        clock.advance(800)
        assert await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000) == []
        answer = await store.heartbeat(
            Heartbeat(worker_id="w1", group="g", holding=holding, lease_ms=LEASE_MS),
            now_ms=clock.now_ms(),
        )
        assert answer.cancel == () and answer.events == []
    first = await store.get(held[0].id)
    assert (first.state, first.started_ms) == (S.IN_PROGRESS, clock.now_ms() - 3 * 800)
    assert first.lease_until_ms == clock.now_ms() + LEASE_MS
    assert (await store.get(held[1].id)).state is S.ASSIGNED


async def test_heartbeat_lists_tasks_reclaimed_by_another_worker(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """A worker whose task was reclaimed and handed to another is told to drop it."""
    task = make_task()
    await store.submit([task], now_ms=clock.now_ms())
    old = await _claim_one(store, clock, "w1")
    clock.advance(LEASE_MS + 1)
    await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
    clock.set_ms((await store.get(task.id)).available_ms)
    new = await _claim_one(store, clock, "w2")
    answer = await store.heartbeat(
        Heartbeat(
            worker_id="w1",
            group="g",
            holding=((task.id, old.fence),),
            started=((task.id, old.fence),),
        ),
        now_ms=clock.now_ms(),
    )
    assert answer.cancel == (task.id,)
    assert answer.events == []
    assert await store.get(task.id) == new


async def test_two_sweeps_at_once_apply_each_change_once(
    backend: Any, store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Two store objects sweeping the same data at once reclaim every expired lease once."""
    tasks = [make_task() for _ in range(50)]
    await store.submit(tasks, now_ms=clock.now_ms())
    await store.claim(_claim(limit=50), now_ms=clock.now_ms())
    other = await backend.open()
    clock.advance(LEASE_MS + 1)
    results = await asyncio.gather(
        *(
            s.sweep(now_ms=clock.now_ms(), worker_ttl_ms=60_000)
            for s in (store, other, store, other)
        )
    )
    events = [e for batch in results for e in batch]
    assert sorted(e.task_id for e in events) == sorted(t.id for t in tasks)
    for task in tasks:
        stored = await store.get(task.id)
        assert (stored.state, stored.attempts, stored.retry_count) == (S.PENDING, 1, 1)


# -- partitions and consumer groups -----------------------------------------------------------


async def _join(store: TaskStore, clock: FakeClock, *workers: str) -> dict[str, tuple[int, ...]]:
    """Heartbeat every worker into group g, then return each one's partitions."""
    for worker in workers:
        await store.heartbeat(Heartbeat(worker_id=worker, group="g"), now_ms=clock.now_ms())
    answers = [
        await store.heartbeat(Heartbeat(worker_id=w, group="g"), now_ms=clock.now_ms())
        for w in workers
    ]
    return {w: a.partitions for w, a in zip(workers, answers, strict=True)}


async def test_group_workers_split_the_partitions_and_claim_from_their_own(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """Two workers of one group own disjoint partitions and claim only from their own."""
    owned = await _join(store, clock, "w1", "w2")
    assert set(owned["w1"]) | set(owned["w2"]) == set(range(config.partitions))
    assert not set(owned["w1"]) & set(owned["w2"])
    assert owned["w1"] and owned["w2"]
    tasks = [
        make_task(gift_id=g)
        for p in range(config.partitions)
        for g in _gifts_in(p, 3, config.partitions)
    ]
    await store.submit(tasks, now_ms=clock.now_ms())
    for worker in ("w1", "w2"):
        mine = len(owned[worker]) * 3
        got, _ = await store.claim(_claim(worker, limit=mine), now_ms=clock.now_ms())
        assert len(got) == mine
        assert {t.partition for t in got} == set(owned[worker])


async def test_an_idle_worker_steals_from_the_deepest_other_partition(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """A worker whose partitions are empty claims from the deepest partition of another."""
    owned = await _join(store, clock, "w1", "w2")
    shallow, deep = owned["w1"][0], owned["w1"][-1]
    tasks = [make_task(gift_id=g) for g in _gifts_in(shallow, 2, config.partitions)]
    tasks += [make_task(gift_id=g) for g in _gifts_in(deep, 5, config.partitions)]
    await store.submit(tasks, now_ms=clock.now_ms())
    got, _ = await store.claim(_claim("w2", limit=4), now_ms=clock.now_ms())
    assert [t.partition for t in got] == [deep] * 4
    got, _ = await store.claim(_claim("w2", limit=4), now_ms=clock.now_ms())
    assert sorted(t.partition for t in got) == sorted([deep, shallow, shallow])


async def test_a_forgotten_worker_s_partitions_move_to_the_survivors(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """Once sweep forgets a silent worker, the remaining worker owns every partition."""
    owned = await _join(store, clock, "w1", "w2")
    assert len(owned["w1"]) < config.partitions
    clock.advance(20_000)
    await store.heartbeat(Heartbeat(worker_id="w1", group="g"), now_ms=clock.now_ms())
    clock.advance(20_000)
    await store.sweep(now_ms=clock.now_ms(), worker_ttl_ms=30_000)
    assert [w.worker_id for w in await store.workers(now_ms=clock.now_ms())] == ["w1"]
    answer = await store.heartbeat(Heartbeat(worker_id="w1", group="g"), now_ms=clock.now_ms())
    assert answer.partitions == tuple(range(config.partitions))


async def test_groups_do_not_share_partitions(
    store: TaskStore, clock: FakeClock, config: Any
) -> None:
    """A worker alone in its group owns every partition, whatever other groups hold."""
    await _join(store, clock, "w1", "w2")
    answer = await store.heartbeat(
        Heartbeat(worker_id="solo", group="other"), now_ms=clock.now_ms()
    )
    assert answer.partitions == tuple(range(config.partitions))


# -- stats, workers, durability ---------------------------------------------------------------


async def test_stats_count_depths_by_type_priority_partition_and_state(
    store: TaskStore, make_task: MakeTask, clock: FakeClock, config: Any
) -> None:
    """stats() counts every task, final ones included, and the oldest PENDING per type."""
    gift = _gifts_in(3, 1, config.partitions)[0]
    early = make_task(gift_id=gift, task_type="wrap", priority=1)
    await store.submit([early], now_ms=clock.now_ms())
    clock.advance(100)
    later = [make_task(gift_id=gift, task_type="wrap", priority=1) for _ in range(2)]
    load = make_task(gift_id=gift, task_type="load", priority=2)
    await store.submit([*later, load], now_ms=clock.now_ms())
    await _complete(store, await _claim_one(store, clock), clock)  # load: highest priority
    await _claim_one(store, clock)  # early: oldest wrap
    stats = await store.stats(now_ms=clock.now_ms())
    depths = {(d.task_type, d.priority, d.partition, d.state): d.count for d in stats.depths}
    assert depths == {
        ("wrap", 1, 3, S.PENDING): 2,
        ("wrap", 1, 3, S.ASSIGNED): 1,
        ("load", 2, 3, S.COMPLETED): 1,
    }
    assert stats.oldest_pending_ms == {"wrap": later[0].available_ms}


async def test_stats_report_the_mean_recent_processing_time(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """recent_processing_s is the mean started-to-completed time of recent tasks, by type."""
    tasks = [make_task(task_type="paint") for _ in range(2)]
    await store.submit(tasks, now_ms=clock.now_ms())
    held, _ = await store.claim(_claim(limit=2), now_ms=clock.now_ms())
    holding = tuple((t.id, t.fence) for t in held)
    await store.heartbeat(
        Heartbeat(worker_id="w1", group="g", holding=holding, started=holding),
        now_ms=clock.now_ms(),
    )
    clock.advance(400)
    await _complete(store, held[0], clock)
    clock.advance(200)
    await _complete(store, held[1], clock)
    stats = await store.stats(now_ms=clock.now_ms())
    assert stats.recent_processing_s == {"paint": pytest.approx(0.5)}


async def test_workers_lists_the_workers_seen_with_what_they_hold(
    store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """workers() reports each worker's group, types, concurrency, times and held task count."""
    await store.submit([make_task(), make_task()], now_ms=clock.now_ms())
    first_seen = clock.now_ms()
    await store.claim(_claim("w1", limit=2, task_types=frozenset({"wrap"})), now_ms=clock.now_ms())
    clock.advance(50)
    await store.heartbeat(
        Heartbeat(worker_id="w1", group="g", task_types=frozenset({"wrap"}), concurrency=4),
        now_ms=clock.now_ms(),
    )
    await store.heartbeat(Heartbeat(worker_id="w2", group="h"), now_ms=clock.now_ms())
    workers = {w.worker_id: w for w in await store.workers(now_ms=clock.now_ms())}
    w1 = workers["w1"]
    assert (w1.group, w1.task_types, w1.concurrency, w1.holding) == ("g", frozenset({"wrap"}), 4, 2)
    assert (w1.first_seen_ms, w1.last_seen_ms) == (first_seen, clock.now_ms())
    assert (workers["w2"].group, workers["w2"].holding, workers["w2"].task_types) == (
        "h",
        0,
        frozenset(),
    )


async def test_submitted_tasks_survive_without_a_clean_close(
    backend: Any, store: TaskStore, make_task: MakeTask, clock: FakeClock
) -> None:
    """Every task whose submit returned is there for a new store object; the old one not closed."""
    tasks = [make_task(metadata={"n": str(i)}) for i in range(200)]
    for chunk in (tasks[:50], tasks[50:]):
        await store.submit(chunk, now_ms=clock.now_ms())
    held = await _claim_one(store, clock)
    reopened = await backend.open()
    assert [await reopened.get(t.id) for t in tasks[1:]] == tasks[1:]
    assert await reopened.get(held.id) == held


# -- the SQLite adapter itself ------------------------------------------------------------------


def _sqlite(path: Path) -> SqliteTaskStore:
    return SqliteTaskStore(path, partitions=8, aging_ms=1_000, policy=RetryPolicy())


async def test_sqlite_store_used_outside_its_lifecycle_raises_unavailable(tmp_path: Path) -> None:
    """Calling a SqliteTaskStore before open() or after close() raises Unavailable."""
    store = _sqlite(tmp_path / "t.db")
    with pytest.raises(Unavailable, match="not open"):
        await store.get(1)
    async with store:
        with pytest.raises(TaskNotFound):
            await store.get(1)
    with pytest.raises(Unavailable, match="closed"):
        await store.get(1)
    await store.close()


async def test_sqlite_driver_errors_become_unavailable(tmp_path: Path) -> None:
    """A file SQLite cannot open surfaces as Unavailable chained to the sqlite3 error."""
    with pytest.raises(Unavailable) as info:
        await _sqlite(tmp_path).open()  # a directory, not a database file
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer schema version is refused at open."""
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigurationError):
        await _sqlite(path).open()


async def test_sqlite_rejects_tasks_not_pending_or_outside_the_partitions(
    tmp_path: Path, make_task: MakeTask, clock: FakeClock
) -> None:
    """submit() refuses a task in another state or with a partition out of range."""
    async with _sqlite(tmp_path / "t.db") as store:
        task = make_task()
        for bad in (replace(task, state=S.COMPLETED), replace(task, partition=8)):
            with pytest.raises(InvalidInput):
                await store.submit([bad], now_ms=clock.now_ms())


async def test_sqlite_processing_time_counts_from_the_claim_when_no_start_was_reported(
    tmp_path: Path, make_task: MakeTask, clock: FakeClock
) -> None:
    """A task completed straight from ASSIGNED is timed from its claim, not as zero."""
    async with _sqlite(tmp_path / "t.db") as store:
        await store.submit([make_task(task_type="sew")], now_ms=clock.now_ms())
        held = await _claim_one(store, clock)
        clock.advance(300)
        await _complete(store, held, clock)
        stats = await store.stats(now_ms=clock.now_ms())
        assert stats.recent_processing_s == {"sew": pytest.approx(0.3)}


async def test_sqlite_claims_from_own_partitions_when_owning_many(
    tmp_path: Path, make_task: MakeTask, clock: FakeClock
) -> None:
    """With more partitions than a worker probes one by one, it still claims only its own."""
    store = SqliteTaskStore(tmp_path / "t.db", partitions=300, aging_ms=1_000, policy=RetryPolicy())
    async with store:
        for worker in ("w1", "w2"):
            await store.heartbeat(Heartbeat(worker_id=worker, group="g"), now_ms=clock.now_ms())
        answer = await store.heartbeat(Heartbeat(worker_id="w1", group="g"), now_ms=clock.now_ms())
        own = set(answer.partitions)
        assert 64 < len(own) < 300
        tasks = [
            replace(t, partition=partition_of(t.gift_id, 300))
            for t in (make_task(priority=i % 3) for i in range(600))
        ]
        await store.submit(tasks, now_ms=clock.now_ms())
        top = sum(1 for t in tasks if t.partition in own and t.priority == 2)
        got, _ = await store.claim(_claim("w1", limit=top + 5), now_ms=clock.now_ms())
        assert {t.partition for t in got} <= own
        assert sorted(t.priority for t in got) == [1] * 5 + [2] * top


async def test_sqlite_a_write_locked_file_raises_unavailable_then_recovers(
    tmp_path: Path, make_task: MakeTask, clock: FakeClock
) -> None:
    """A write lock held past busy_timeout by another process is Unavailable, and passes."""
    path = tmp_path / "t.db"
    store = SqliteTaskStore(
        path, partitions=8, aging_ms=1_000, policy=RetryPolicy(), busy_timeout_ms=50
    )
    async with store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        task = make_task()
        with pytest.raises(Unavailable) as info:
            await store.submit([task], now_ms=clock.now_ms())
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        other.close()
        await store.submit([task], now_ms=clock.now_ms())
        assert await store.get(task.id) == task
