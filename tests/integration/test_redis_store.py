"""The Redis task store against real throwaway servers: what the contract suite does not cover.

Script loading (NOSCRIPT after a flush), cross-partition follow-ups finished by
the sweeper, replication acknowledgements (``WAIT``) on a primary with a
replica and on a cluster, Sentinel URLs, errors at the edges.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from northpole.core.errors import ConfigurationError, Unavailable
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_claim import partition_map
from northpole.tasks.redis_store import RedisTaskStore
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import partition_of
from northpole.tasks.store import Claim
from redis_servers import (
    RedisCluster,
    RedisProcess,
    cli,
    start_cluster,
    start_redis,
    start_replica,
    start_sentinels,
    unique_namespace,
)

pytestmark = pytest.mark.integration

S = TaskState
PARTITIONS = 8
NOW = 1_767_225_600_000
_ids = itertools.count(10_000)


def make_task(*, gift_id: int | None = None, dependencies: tuple[int, ...] = ()) -> Task:
    """A PENDING task available at NOW (gift id = task id unless given)."""
    task_id = next(_ids)
    gift = task_id if gift_id is None else gift_id
    return Task(
        id=task_id,
        gift_id=gift,
        task_type="wrap",
        priority=0,
        dependencies=dependencies,
        max_retries=3,
        deadline_ms=None,
        metadata={},
        idempotency_key=None,
        partition=partition_of(gift, PARTITIONS),
        state=S.PENDING,
        created_ms=NOW,
        updated_ms=NOW,
        available_ms=NOW,
    )


def store_on(url: str, **options: Any) -> RedisTaskStore:
    """A store on ``url`` in a fresh namespace."""
    options.setdefault("namespace", unique_namespace("i"))
    return RedisTaskStore(
        url, partitions=PARTITIONS, aging_ms=1_000, policy=RetryPolicy(100, 2.0, 1_000), **options
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A throwaway redis-server for this module."""
    process = start_redis(tmp_path_factory.mktemp("redis"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def primary_and_replica(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A primary with one replica."""
    root = tmp_path_factory.mktemp("replicated")
    primary = start_redis(root / "primary")
    replica = start_replica(root / "replica", primary)
    yield primary, replica
    replica.stop()
    primary.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master cluster without replicas."""
    made = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield made
    made.stop()


@pytest.fixture
async def store(server: RedisProcess) -> AsyncIterator[RedisTaskStore]:
    """An open store on the module's server, in a namespace of its own."""
    async with store_on(server.url) as opened:
        yield opened


def _other_partition_gift(partition: int) -> int:
    return next(g for g in itertools.count(1) if partition_of(g, PARTITIONS) != partition)


async def test_scripts_flushed_from_the_server_are_loaded_again(
    store: RedisTaskStore, server: RedisProcess
) -> None:
    """After SCRIPT FLUSH, submit and claim still work: NOSCRIPT makes the store reload."""
    cli(server.port, "SCRIPT", "FLUSH")
    task = make_task()
    await store.submit([task], now_ms=NOW)
    claimed, _ = await store.claim(Claim("w", "g", lease_ms=1_000), now_ms=NOW)
    assert [t.id for t in claimed] == [task.id]


async def test_a_record_stored_with_every_field_reads_and_runs_like_a_short_one(
    store: RedisTaskStore, server: RedisProcess
) -> None:
    """Records written with their default fields present (as earlier versions stored
    them) are read, claimed and completed the same as the 9-field records of today."""
    short, full = make_task(), make_task()
    await store.submit([short, full], now_ms=NOW)
    key = store.keys.task(full.partition, full.id)
    stored = set(cli(server.port, "HKEYS", store.keys.task(short.partition, short.id)).split())
    assert not stored & {"n", "rc", "f", "u", "a"}
    cli(server.port, "HSET", key, "n", "0", "rc", "0", "f", "0", "u", str(NOW), "a", str(NOW))
    assert await store.get(full.id) == full
    claimed, _ = await store.claim(Claim("w", "g", limit=2, lease_ms=1_000), now_ms=NOW + 1)
    assert sorted(t.id for t in claimed) == sorted([short.id, full.id])
    for task in claimed:
        assert (task.attempts, task.fence, task.updated_ms) == (1, 1, NOW + 1)
        await store.complete(task.id, worker_id="w", fence=1, result="ok", now_ms=NOW + 2)
    done = [await store.get(t.id) for t in (short, full)]
    assert [(t.state, t.attempts, t.result) for t in done] == [(S.COMPLETED, 1, "ok")] * 2


async def test_a_release_left_in_the_outbox_is_applied_by_the_sweeper(
    store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dependent in another partition, whose release the completing process never sent,
    becomes claimable once a sweep runs after the outbox grace."""
    parent = make_task()
    child = make_task(gift_id=_other_partition_gift(parent.partition), dependencies=(parent.id,))
    await store.submit([parent, child], now_ms=NOW)
    [held], _ = await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=NOW)

    async def lost(*_: Any, **__: Any) -> list[Any]:
        return []  # the process "dies" before applying the follow-up

    monkeypatch.setattr(store, "follow", lost)
    await store.complete(held.id, worker_id="w", fence=held.fence, result=None, now_ms=NOW)
    monkeypatch.undo()
    assert (await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=NOW))[0] == []
    await store.sweep(now_ms=NOW + 1_000, worker_ttl_ms=60_000)  # within the grace: not yet
    assert (await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=NOW + 1_000))[0] == []
    later = NOW + 10_000
    await store.sweep(now_ms=later, worker_ttl_ms=60_000)
    claimed, _ = await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=later)
    assert [t.id for t in claimed] == [child.id]
    await store.sweep(now_ms=later + 10_000, worker_ttl_ms=60_000)
    assert (await store.get(child.id)).state is S.ASSIGNED  # applied once, not again


async def test_a_failure_left_in_the_outbox_fails_the_dependent_at_the_next_sweep(
    store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled task's dependent elsewhere is failed by the sweeper if the cascade was cut."""
    parent = make_task()
    child = make_task(gift_id=_other_partition_gift(parent.partition), dependencies=(parent.id,))
    await store.submit([parent, child], now_ms=NOW)

    async def lost(*_: Any, **__: Any) -> list[Any]:
        return []

    monkeypatch.setattr(store, "follow", lost)
    events = await store.cancel(parent.id, now_ms=NOW)
    monkeypatch.undo()
    assert [e.task_id for e in events] == [parent.id]
    swept = await store.sweep(now_ms=NOW + 10_000, worker_ttl_ms=60_000)
    assert [(e.task_id, e.new_state, e.reason) for e in swept] == [
        (child.id, S.FAILED, "dependency_failed")
    ]


async def test_a_release_found_by_a_redrive_recheck_survives_in_the_outbox(
    store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dependency that completed while a redrive read it as PENDING is released by the
    sweeper even if the redriving process dies before applying the release itself."""
    parent = make_task()
    child = make_task(gift_id=_other_partition_gift(parent.partition), dependencies=(parent.id,))
    await store.submit([parent, child], now_ms=NOW)
    await store.cancel(child.id, now_ms=NOW)
    stale_parent = await store.get(parent.id)
    [held], _ = await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=NOW)
    await store.complete(held.id, worker_id="w", fence=held.fence, result=None, now_ms=NOW)
    real_load = store.load_many
    served = False

    async def stale_first(ids: Any) -> dict[int, Task]:
        nonlocal served
        ids = list(ids)
        if parent.id in ids and not served:  # the redrive's first read: before the completion
            served = True
            return {parent.id: stale_parent}
        return await real_load(ids)

    async def lost(*_: Any, **__: Any) -> list[Any]:
        return []  # the process "dies" before applying the follow-up

    monkeypatch.setattr(store, "load_many", stale_first)
    monkeypatch.setattr(store, "follow", lost)
    await store.redrive(child.id, now_ms=NOW)
    monkeypatch.undo()
    assert (await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=NOW))[0] == []
    later = NOW + 10_000
    await store.sweep(now_ms=later, worker_ttl_ms=60_000)
    claimed, _ = await store.claim(Claim("w", "g", lease_ms=60_000), now_ms=later)
    assert [t.id for t in claimed] == [child.id]


async def test_a_submit_elsewhere_wakes_a_waiting_claimer_before_its_timeout(
    server: RedisProcess,
) -> None:
    """A store waiting for work returns within a fraction of its 10 s timeout when another
    store (another process's) submits a task, and the count it returns has moved."""
    namespace = unique_namespace("wake")
    async with (
        store_on(server.url, namespace=namespace) as waiting,
        store_on(server.url, namespace=namespace) as other,
    ):
        seen = await waiting.wait_for_work(-1, 0.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = asyncio.create_task(waiting.wait_for_work(seen, 10.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await other.submit([make_task()], now_ms=NOW)
        assert await asyncio.wait_for(waiter, 5.0) > seen
        assert loop.time() - started < 2.0


async def test_a_waiter_on_some_partitions_ignores_wake_ups_of_the_others(
    server: RedisProcess,
) -> None:
    """wait_for_work on a set of partitions returns when one of them is woken, not when
    another partition is (a worker waits on the partitions it owns)."""
    namespace = unique_namespace("wake-some")
    async with (
        store_on(server.url, namespace=namespace) as waiting,
        store_on(server.url, namespace=namespace) as other,
    ):
        first = make_task()
        mine = {first.partition}
        elsewhere = make_task(gift_id=_other_partition_gift(first.partition))
        seen = await waiting.wait_for_work(-1, 0.0, mine)
        waiter = asyncio.create_task(waiting.wait_for_work(seen, 10.0, mine))
        await other.submit([elsewhere], now_ms=NOW)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await other.submit([make_task(gift_id=first.gift_id)], now_ms=NOW)
        assert await asyncio.wait_for(waiter, 5.0) > seen


async def test_a_claim_after_a_short_one_skips_redis_until_a_wake_up(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a claim came back short, the worker's next claim answers empty without a
    round trip while nothing was published; after a submit's wake-up the next one claims
    from the woken partition alone, in one round trip."""
    namespace = unique_namespace("short")
    async with (
        store_on(server.url, namespace=namespace) as store,
        store_on(server.url, namespace=namespace) as other,
    ):
        claim = Claim("w", "g", limit=10, lease_ms=60_000)
        seen = await store.wait_for_work(-1, 0.0)
        await other.submit([make_task()], now_ms=NOW)
        await store.wait_for_work(seen, 5.0)
        got, _ = await store.claim(claim, now_ms=NOW)
        assert len(got) == 1  # short: 1 of 10
        sent: list[object] = []
        run = store.runner.run

        async def counted(calls: Any, **options: Any) -> Any:
            sent.append(calls)
            return await run(calls, **options)

        monkeypatch.setattr(store.runner, "run", counted)
        assert await store.claim(claim, now_ms=NOW) == ([], [])
        assert sent == []  # answered without asking Redis
        seen = await store.wait_for_work(-1, 0.0)
        woken = make_task()
        await other.submit([woken], now_ms=NOW)
        await store.wait_for_work(seen, 5.0)
        got, _ = await store.claim(claim, now_ms=NOW)
        assert [t.id for t in got] == [woken.id]
        # Straight to the woken partition: one round trip, one claim script, no peeks.
        assert [[c.script for c in calls] for calls in sent] == [["claim"]]


async def test_claims_look_at_other_workers_partitions_at_most_every_steal_interval(
    server: RedisProcess,
) -> None:
    """An idle worker steals from another's partition at its first claim, then not again
    until ``steal_every_s`` passed (its own partitions are looked at by every claim)."""
    namespace = unique_namespace("steal")
    async with store_on(server.url, namespace=namespace, steal_every_s=0.5) as store:
        for worker in ("w1", "w2"):
            await store.claim(Claim(worker, "g", limit=0), now_ms=NOW)
        own = set(partition_map(PARTITIONS, store.group_members["g"])["w2"])
        other = next(p for p in range(PARTITIONS) if p not in own)
        gifts = (g for g in itertools.count(1) if partition_of(g, PARTITIONS) == other)
        await store.submit([make_task(gift_id=next(gifts)) for _ in range(4)], now_ms=NOW)
        claim = Claim("w2", "g", limit=1, lease_ms=60_000)
        assert len((await store.claim(claim, now_ms=NOW))[0]) == 1
        assert (await store.claim(claim, now_ms=NOW))[0] == []
        await asyncio.sleep(0.6)
        assert len((await store.claim(claim, now_ms=NOW))[0]) == 1


async def test_a_store_used_outside_its_lifecycle_raises_unavailable(server: RedisProcess) -> None:
    """Calling the store before open() or after close() raises Unavailable."""
    store = store_on(server.url)
    with pytest.raises(Unavailable, match="not open"):
        await store.get(1)
    async with store:
        await store.stats(now_ms=NOW)
    with pytest.raises(Unavailable, match="closed"):
        await store.get(1)


async def test_an_unreachable_server_is_unavailable_at_open() -> None:
    """Opening a store on a port nobody listens on raises Unavailable from the driver error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable) as info:
        await store_on(f"redis://127.0.0.1:{port}/0").open()
    assert info.value.__cause__ is not None


async def test_an_unsupported_url_is_a_configuration_error() -> None:
    """A URL of an unknown scheme is refused when the store opens."""
    with pytest.raises(ConfigurationError):
        await store_on("http://127.0.0.1:1").open()


async def test_writes_wait_for_the_replica_when_asked(
    primary_and_replica: tuple[RedisProcess, RedisProcess],
) -> None:
    """With wait_replicas=1 a submit returns once the replica has the task."""
    primary, replica = primary_and_replica
    namespace = unique_namespace("w")
    async with store_on(primary.url, wait_replicas=1, namespace=namespace) as store:
        task = make_task()
        await store.submit([task], now_ms=NOW)
    key = f"{namespace}:{{p{task.partition}}}:t:{task.id}"
    assert cli(replica.port, "HGET", key, "s").strip() == "PENDING"


async def test_too_few_replicas_make_a_write_unavailable(
    primary_and_replica: tuple[RedisProcess, RedisProcess],
) -> None:
    """Asking for two replica acknowledgements with one replica raises Unavailable."""
    primary, _ = primary_and_replica
    async with store_on(primary.url, wait_replicas=2, wait_timeout_ms=100) as store:
        with pytest.raises(Unavailable, match="replicas acknowledged"):
            await store.submit([make_task()], now_ms=NOW)


async def test_a_cluster_waits_on_every_primary_it_wrote_to(cluster: RedisCluster) -> None:
    """In a cluster each primary gets its own WAIT: with no replicas, a write is Unavailable."""
    async with store_on(cluster.url, wait_replicas=1, wait_timeout_ms=100) as store:
        with pytest.raises(Unavailable, match="replicas acknowledged"):
            await store.submit([make_task() for _ in range(20)], now_ms=NOW)
    async with store_on(cluster.url) as store:
        tasks = [make_task() for _ in range(20)]
        await store.submit(tasks, now_ms=NOW)
        claimed, _ = await store.claim(Claim("w", "g", limit=20), now_ms=NOW)
        assert sorted(t.id for t in claimed) == sorted(t.id for t in tasks)


async def test_a_sentinel_url_reaches_the_primary(
    primary_and_replica: tuple[RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    """``redis+sentinel://`` finds the primary Sentinel names and the store works on it."""
    primary, _ = primary_and_replica
    sentinels = start_sentinels(tmp_path, primary, "elves", count=1, quorum=1)
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinels[0].port}/elves"
        async with store_on(url) as store:
            task = make_task()
            await store.submit([task], now_ms=NOW)
            assert await store.get(task.id) == task
    finally:
        for sentinel in sentinels:
            sentinel.stop()
