"""Workshop ids leased from a real etcd: lowest free first, the 1,025th refused, loss, re-take."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etcd_servers import EtcdCluster, free_port
from northpole.coord import keys
from northpole.coord.client import EtcdClient
from northpole.coord.settings import CoordSettings
from northpole.coord.workshop import WORKSHOP_IDS, EtcdWorkshopAllocator, EtcdWorkshopLease
from northpole.core.errors import WorkshopIdUnavailable
from northpole.core.metrics import new_registry
from northpole.core.settings import IdGenSettings
from northpole.idgen.service import IdGenService
from northpole.idgen.snowflake import decode

pytestmark = pytest.mark.integration


def _settings(etcd: EtcdCluster, **extra: object) -> CoordSettings:
    return CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2, **extra)


async def test_generators_take_lowest_free_ids_in_order(etcd: EtcdCluster) -> None:
    """Three allocators get workshop ids 0, 1 and 2, each recorded on its lease."""
    allocators = [EtcdWorkshopAllocator(_settings(etcd)) for _ in range(3)]
    leases = [await a.acquire() for a in allocators]
    try:
        assert [lease.workshop_id for lease in leases] == [0, 1, 2]
        assert all(lease.source == "etcd" for lease in leases)
        assert await allocators[0].taken() == [0, 1, 2]
    finally:
        for allocator, lease in zip(allocators, leases, strict=True):
            await allocator.release(lease)


async def test_released_id_is_the_next_one_taken(etcd: EtcdCluster) -> None:
    """Releasing workshop id 1 frees it at once for the next generator, below higher free ids."""
    allocator = EtcdWorkshopAllocator(_settings(etcd))
    leases = [await allocator.acquire() for _ in range(3)]
    await allocator.release(leases[1])
    again = await allocator.acquire()
    try:
        assert again.workshop_id == 1
    finally:
        for lease in (leases[0], leases[2], again):
            await allocator.release(lease)


async def test_regions_lease_ids_independently(etcd: EtcdCluster) -> None:
    """Generators of two regions both get workshop id 0."""
    north = EtcdWorkshopAllocator(_settings(etcd, region="north"))
    south = EtcdWorkshopAllocator(_settings(etcd, region="south"))
    a, b = await north.acquire(), await south.acquire()
    try:
        assert a.workshop_id == b.workshop_id == 0
    finally:
        await north.release(a)
        await south.release(b)


async def test_1025th_generator_gets_workshop_id_unavailable(etcd: EtcdCluster) -> None:
    """With all 1,024 ids held, acquire raises WorkshopIdUnavailable (503) naming the limit."""
    settings = _settings(etcd)
    async with EtcdClient(etcd.endpoints) as client:
        lease_id, _ = await client.grant(30)
        await asyncio.gather(
            *(
                client.put(keys.workshop_key(settings.prefix, "default", i), b"{}", lease=lease_id)
                for i in range(WORKSHOP_IDS)
            )
        )
        allocator = EtcdWorkshopAllocator(settings)
        with pytest.raises(WorkshopIdUnavailable) as caught:
            await allocator.acquire()
        assert caught.value.status_code == 503
        assert "1024" in caught.value.message
        await client.revoke(lease_id)
        lease = await allocator.acquire()  # and the refused one leaked nothing
        assert lease.workshop_id == 0
        await allocator.release(lease)


async def test_lease_revoked_elsewhere_is_lost_and_check_raises(etcd: EtcdCluster) -> None:
    """When etcd drops the lease, lost() returns and check() raises WorkshopIdUnavailable."""
    allocator = EtcdWorkshopAllocator(_settings(etcd))
    lease = await allocator.acquire()
    assert isinstance(lease, EtcdWorkshopLease)
    lease.check()
    async with EtcdClient(etcd.endpoints) as client:
        await client.revoke(lease.keeper.lease_id)
    reason = await asyncio.wait_for(lease.lost(), timeout=5)
    assert "expired" in reason
    with pytest.raises(WorkshopIdUnavailable):
        lease.check()
    await allocator.release(lease)


async def test_unreachable_etcd_refuses_with_workshop_error() -> None:
    """Without a reachable etcd, acquire fails with WorkshopIdUnavailable, not a gRPC error."""
    settings = CoordSettings(endpoints=[f"127.0.0.1:{free_port()}"], request_timeout_s=0.3)
    allocator = EtcdWorkshopAllocator(settings)
    with pytest.raises(WorkshopIdUnavailable, match="no workshop id"):
        await allocator.acquire()


async def test_idgen_service_retakes_an_id_after_losing_its_lease(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """The Gift ID service stops issuing when its lease is lost, then takes an id and resumes."""
    allocator = EtcdWorkshopAllocator(_settings(etcd))
    blocker_allocator = EtcdWorkshopAllocator(_settings(etcd))
    service = IdGenService(
        IdGenSettings(), data_dir=tmp_path, registry=new_registry(), allocator=allocator
    )
    async with service.lifespan():
        first = service.generate_list(3)
        old = service._lease
        assert isinstance(old, EtcdWorkshopLease) and old.workshop_id == 0
        async with EtcdClient(etcd.endpoints) as client:
            await client.revoke(old.keeper.lease_id)
        blocker = await blocker_allocator.acquire()  # races the service for the freed id
        await asyncio.wait_for(old.lost(), timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while service._lease in (None, old) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        new = service._lease
        later = service.generate_list(3)
        await blocker_allocator.release(blocker)
    assert isinstance(new, EtcdWorkshopLease) and new is not old
    assert new.workshop_id != blocker.workshop_id
    assert {decode(i).workshop_id for i in first} == {0}
    assert {decode(i).workshop_id for i in later} == {new.workshop_id}
    assert service.metrics.leases_lost._value.get() == 1
