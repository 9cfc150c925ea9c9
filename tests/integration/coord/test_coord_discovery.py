"""Service discovery on a real etcd: registration, health marks, expiry, resolver."""

from __future__ import annotations

import asyncio

import pytest

from etcd_servers import EtcdCluster
from northpole.coord import keys
from northpole.coord.client import EtcdClient
from northpole.coord.discovery import ServiceRegistrar, ServiceResolver
from northpole.coord.settings import CoordSettings
from northpole.core.app import Readiness

pytestmark = pytest.mark.integration


def _registrar(
    client: EtcdClient, settings: CoordSettings, state: dict[str, bool], instance: str = "i1"
) -> ServiceRegistrar:
    return ServiceRegistrar(
        client,
        settings,
        services={"idgen": lambda: Readiness(state["ok"], "ok" if state["ok"] else "down")},
        instance_id=instance,
        address=f"http://127.0.0.1:{8000 + len(instance)}",
        version="1.2.3",
    )


async def test_registered_instance_is_resolved_as_healthy(etcd: EtcdCluster) -> None:
    """A registered, healthy instance is listed with its address, version and start time."""
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2)
    async with EtcdClient(etcd.endpoints) as client:
        registrar = await _registrar(client, settings, {"ok": True}).start()
        resolver = ServiceResolver(client, cache_s=0)
        found = await resolver.instances("idgen")
        assert await resolver.healthy("idgen") == ["http://127.0.0.1:8002"]
        await registrar.stop()
        assert await resolver.instances() == []
    assert [(i.service, i.instance_id, i.record.version) for i in found] == [
        ("idgen", "i1", "1.2.3")
    ]
    assert found[0].record.started_at > 0


async def test_unhealthy_instance_is_marked_and_not_resolved(etcd: EtcdCluster) -> None:
    """An instance whose check fails is marked unhealthy at the next interval and left out."""
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2, health_interval_s=0.1)
    state = {"ok": True}
    async with EtcdClient(etcd.endpoints) as client:
        registrar = await _registrar(client, settings, state).start()
        resolver = ServiceResolver(client, cache_s=0)
        state["ok"] = False
        await asyncio.sleep(0.4)
        listed = await resolver.instances("idgen")
        healthy = await resolver.healthy("idgen")
        state["ok"] = True
        await asyncio.sleep(0.4)
        healthy_again = await resolver.healthy("idgen")
        await registrar.stop()
    assert listed[0].record.health == "unhealthy" and listed[0].record.detail == "down"
    assert healthy == []
    assert healthy_again == ["http://127.0.0.1:8002"]


async def test_health_check_that_raises_marks_unhealthy(etcd: EtcdCluster) -> None:
    """A health check that raises marks the instance unhealthy instead of stopping the loop."""

    def broken() -> Readiness:
        raise RuntimeError("boom")

    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2)
    async with EtcdClient(etcd.endpoints) as client:
        registrar = ServiceRegistrar(
            client, settings, services={"x": broken}, instance_id="i", address="a", version="v"
        )
        await registrar.start()
        found = await ServiceResolver(client, cache_s=0).instances("x")
        await registrar.stop()
    assert found[0].record.health == "unhealthy"
    assert "boom" in found[0].record.detail


async def test_instance_that_stops_refreshing_leaves_within_one_ttl(etcd: EtcdCluster) -> None:
    """When an instance's lease is no longer refreshed its key is gone within one TTL."""
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=1)
    async with EtcdClient(etcd.endpoints) as client:
        registrar = await _registrar(client, settings, {"ok": True}).start()
        assert registrar._task is not None and registrar.keeper is not None
        registrar._task.cancel()
        await registrar.keeper.close(revoke=False)  # as if the process died
        resolver = ServiceResolver(client, cache_s=0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while await resolver.instances("idgen") and loop.time() - started < 5:
            await asyncio.sleep(0.05)
        gone_after = loop.time() - started
        assert await resolver.instances("idgen") == []
    assert gone_after <= 1.0 + 0.6  # TTL, plus etcd's 500 ms expiry sweep and a poll


async def test_registrar_registers_again_after_losing_its_lease(etcd: EtcdCluster) -> None:
    """If etcd drops the lease, the next health tick registers the instance on a new lease."""
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2, health_interval_s=0.1)
    async with EtcdClient(etcd.endpoints) as client:
        registrar = await _registrar(client, settings, {"ok": True}).start()
        assert registrar.keeper is not None
        old = registrar.keeper.lease_id
        await client.revoke(old)
        resolver = ServiceResolver(client, cache_s=0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            if registrar.keeper.lease_id != old and await resolver.instances("idgen"):
                break
            await asyncio.sleep(0.05)
        assert registrar.keeper.lease_id != old
        assert registrar.registered()
        assert len(await resolver.instances("idgen")) == 1
        await registrar.stop()


async def test_resolver_serves_from_cache_within_its_ttl(etcd: EtcdCluster) -> None:
    """Within cache_s the resolver answers from its last read, then reads again."""
    now = [0.0]
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=2)
    async with EtcdClient(etcd.endpoints) as client:
        resolver = ServiceResolver(client, cache_s=1.0, monotonic=lambda: now[0])
        assert await resolver.instances("idgen") == []
        registrar = await _registrar(client, settings, {"ok": True}).start()
        assert await resolver.instances("idgen") == []
        now[0] = 1.5
        assert len(await resolver.instances("idgen")) == 1
        await registrar.stop()


async def test_foreign_keys_under_services_are_ignored(etcd: EtcdCluster) -> None:
    """A key under the services prefix that is not an instance record is skipped."""
    async with EtcdClient(etcd.endpoints) as client:
        await client.put(keys.instance_key("/northpole", "idgen", "junk"), b"not json")
        await client.put(b"/northpole/services/idgen", b"{}")
        assert await ServiceResolver(client, cache_s=0).instances() == []
