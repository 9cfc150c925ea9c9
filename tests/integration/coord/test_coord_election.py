"""Leader election on a real etcd: queue order, resignation, expiry, observation, fencing."""

from __future__ import annotations

import asyncio

import pytest

from etcd_servers import EtcdCluster
from northpole.coord.client import EtcdClient, Put
from northpole.coord.election import Election
from northpole.coord.metrics import CoordMetrics
from northpole.core.errors import Unavailable
from northpole.core.metrics import new_registry

pytestmark = pytest.mark.integration


async def test_first_candidate_leads_and_second_waits(etcd: EtcdCluster) -> None:
    """The first campaign wins at once; the second waits until the first resigns."""
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "matcher", ttl_s=2)
        first = await election.campaign("a")
        second = asyncio.create_task(election.campaign("b"))
        await asyncio.sleep(0.3)
        assert not second.done()
        assert (await election.leader()).candidate == "a"
        await first.resign()
        leadership = await asyncio.wait_for(second, timeout=5)
        assert leadership.candidate == "b"
        assert leadership.token > first.token
        await leadership.resign()


async def test_leadership_passes_when_leader_lease_expires(etcd: EtcdCluster) -> None:
    """A leader that stops refreshing (lease not revoked) is replaced in about one TTL."""
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "m", ttl_s=1)
        first = await election.campaign("a")
        second = asyncio.create_task(election.campaign("b"))
        await first.keeper.close(revoke=False)  # like a process killed: the lease just expires
        loop = asyncio.get_running_loop()
        started = loop.time()
        leadership = await asyncio.wait_for(second, timeout=5)
        assert loop.time() - started < 3
        assert leadership.candidate == "b"
        with pytest.raises(Unavailable):
            first.check()
        await leadership.resign()


async def test_fenced_write_fails_after_leadership_moves(etcd: EtcdCluster) -> None:
    """A write fenced by an old leader's token is refused once another candidate leads."""
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "fence", ttl_s=2)
        old = await election.campaign("a")
        assert await old.put(b"/data/x", b"from-a")
        waiting = asyncio.create_task(election.campaign("b"))
        await client.revoke(old.keeper.lease_id)  # the old leader does not know yet
        new = await asyncio.wait_for(waiting, timeout=5)
        stale = await client.txn([old.fence()], [Put(b"/data/x", b"stale")])
        assert not stale.succeeded
        assert await new.put(b"/data/x", b"from-b")
        got = await client.get(b"/data/x")
        assert got is not None and got.value == b"from-b"
        await new.resign()


async def test_observe_reports_each_leader_change(etcd: EtcdCluster) -> None:
    """observe() yields the current leader, then every change, ending with None."""
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "watched", ttl_s=2)
        seen: list[str | None] = []

        async def watch() -> None:
            async for leader in election.observe():
                seen.append(leader.candidate if leader else None)
                if len(seen) == 4:
                    return

        observer = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        a = await election.campaign("a")
        b_task = asyncio.create_task(election.campaign("b"))
        await asyncio.sleep(0.2)
        await a.resign()
        b = await asyncio.wait_for(b_task, timeout=5)
        await b.resign()
        await asyncio.wait_for(observer, timeout=5)
    assert seen == [None, "a", "b", None]


async def test_leader_changes_are_counted(etcd: EtcdCluster) -> None:
    """consensus_leader_changes_total counts each term won, and is_leader follows resignation."""
    metrics = CoordMetrics.register(new_registry())
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "counted", ttl_s=2, metrics=metrics)
        for _ in range(2):
            leadership = await election.campaign("a")
            assert metrics.is_leader.labels("counted")._value.get() == 1
            await leadership.resign()
    assert metrics.leader_changes.labels("counted")._value.get() == 2
    assert metrics.is_leader.labels("counted")._value.get() == 0


async def test_cancelled_campaign_leaves_no_candidate(etcd: EtcdCluster) -> None:
    """Cancelling a waiting campaign revokes its key, so it never leads later."""
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "cancel", ttl_s=2)
        first = await election.campaign("a")
        waiting = asyncio.create_task(election.campaign("b"))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await first.resign()
        await asyncio.sleep(0.1)
        assert await election.leader() is None


async def test_leader_past_local_deadline_refuses_to_act(etcd: EtcdCluster) -> None:
    """With its monotonic clock past the deadline, a leader's check and put raise."""
    now = [0.0]
    async with EtcdClient(etcd.endpoints) as client:
        election = Election(client, "clock", ttl_s=10, monotonic=lambda: now[0])
        leadership = await election.campaign("a")
        leadership.check()
        now[0] = 8.0  # 10 s TTL less the 20 % margin
        with pytest.raises(Unavailable):
            leadership.check()
        with pytest.raises(Unavailable):
            await leadership.put(b"/k", b"v")
        await leadership.resign()
