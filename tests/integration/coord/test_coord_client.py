"""The etcd client against a real etcd: key-value, transactions, leases, watches, errors."""

from __future__ import annotations

import asyncio

import pytest

from etcd_servers import EtcdCluster, free_port
from northpole.coord.client import Compare, EtcdClient, Get, Put
from northpole.core.errors import NotFound, Unavailable

pytestmark = pytest.mark.integration


async def test_put_get_and_prefix_range(etcd: EtcdCluster) -> None:
    """Keys written are read back singly and by prefix, in key order."""
    async with EtcdClient(etcd.endpoints) as client:
        await client.put(b"/t/b", b"2")
        await client.put(b"/t/a", b"1")
        await client.put(b"/u/a", b"x")
        one = await client.get(b"/t/a")
        found = await client.get_prefix(b"/t/")
    assert one is not None and one.value == b"1"
    assert [kv.key for kv in found.kvs] == [b"/t/a", b"/t/b"]
    assert found.revision >= 3


async def test_txn_create_if_absent_succeeds_once(etcd: EtcdCluster) -> None:
    """A create-if-absent transaction succeeds for the first writer and reports the holder."""
    async with EtcdClient(etcd.endpoints) as client:
        first = await client.txn([Compare.absent(b"/k")], [Put(b"/k", b"a")], [Get(b"/k")])
        second = await client.txn([Compare.absent(b"/k")], [Put(b"/k", b"b")], [Get(b"/k")])
    assert first.succeeded and not second.succeeded
    assert second.ranges[0][0].value == b"a"


async def test_key_on_lease_vanishes_when_lease_revoked(etcd: EtcdCluster) -> None:
    """Revoking a lease deletes the keys attached to it."""
    async with EtcdClient(etcd.endpoints) as client:
        lease_id, ttl = await client.grant(5)
        await client.put(b"/leased", b"v", lease=lease_id)
        await client.revoke(lease_id)
        assert ttl >= 5
        assert await client.get(b"/leased") is None


async def test_keepalive_reports_ttl_then_zero_after_revoke(etcd: EtcdCluster) -> None:
    """A keepalive answers the granted TTL while the lease lives and 0 once it is gone."""
    async with EtcdClient(etcd.endpoints) as client:
        lease_id, ttl = await client.grant(3)
        stream = client.keepalive()
        assert await stream.ping(lease_id, timeout_s=2) == ttl
        await client.revoke(lease_id)
        assert await stream.ping(lease_id, timeout_s=2) <= 0
        stream.close()


async def test_watch_sees_puts_and_deletes_after_start_revision(etcd: EtcdCluster) -> None:
    """A watch from a revision delivers every later change under its prefix."""
    async with EtcdClient(etcd.endpoints) as client:
        start = (await client.get_prefix(b"/w/")).revision + 1
        await client.put(b"/w/a", b"1")
        await client.delete(b"/w/a")
        async with client.watch_prefix(b"/w/", start_revision=start) as watch:
            seen: list[tuple[str, bytes]] = []
            async for batch in watch:
                seen.extend((ev.kind, ev.kv.key) for ev in batch)
                if len(seen) >= 2:
                    break
    assert seen == [("PUT", b"/w/a"), ("DELETE", b"/w/a")]


async def test_unreachable_etcd_raises_unavailable() -> None:
    """A request to an endpoint where nothing listens fails with Unavailable within its deadline."""
    async with EtcdClient([f"127.0.0.1:{free_port()}"], timeout_s=0.3) as client:
        with pytest.raises(Unavailable):
            await client.get(b"/x")


async def test_revoking_unknown_lease_is_not_an_error(etcd: EtcdCluster) -> None:
    """Revoking a lease that no longer exists returns quietly."""
    async with EtcdClient(etcd.endpoints) as client:
        lease_id, _ = await client.grant(5)
        await client.revoke(lease_id)
        await client.revoke(lease_id)


async def test_closed_client_refuses_requests(etcd: EtcdCluster) -> None:
    """A client that is not open raises Unavailable instead of crashing."""
    client = EtcdClient(etcd.endpoints)
    with pytest.raises(Unavailable):
        await client.get(b"/x")


async def test_lease_not_found_maps_to_not_found(etcd: EtcdCluster) -> None:
    """Putting a key on an unknown lease raises NotFound, not a gRPC error."""
    async with EtcdClient(etcd.endpoints) as client:
        with pytest.raises(NotFound):
            await client.put(b"/x", b"v", lease=12345)


async def test_client_fails_over_when_a_member_dies(etcd_cluster: EtcdCluster) -> None:
    """With three members, writes succeed again within seconds after the member in use dies."""
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=1) as client:
        await client.put(b"/f", b"1")
        etcd_cluster.members[0].kill()  # the first address: the member the channel uses
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8
        while True:
            try:
                await client.put(b"/f", b"2")
                break
            except Unavailable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        got = await client.get(b"/f")
    assert got is not None and got.value == b"2"
