"""Coordination under faults on real etcd: paused generators, killed instances, etcd leader loss.

Every wait is bounded; processes and etcd members are killed when a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _path in (str(_TESTS), str(_TESTS / "integration" / "coord")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from etcd_servers import EtcdCluster, etcd, etcd_cluster  # noqa: E402
from northpole.coord.client import EtcdClient  # noqa: E402
from northpole.coord.discovery import ServiceRegistrar, ServiceResolver  # noqa: E402
from northpole.coord.election import Election  # noqa: E402
from northpole.coord.settings import CoordSettings  # noqa: E402
from northpole.core.app import Readiness  # noqa: E402
from northpole.core.errors import Unavailable  # noqa: E402
from northpole.idgen.snowflake import decode  # noqa: E402

__all__ = ["etcd", "etcd_cluster"]

pytestmark = [pytest.mark.integration, pytest.mark.fault]

HELPER = str(_TESTS / "integration" / "coord" / "coord_proc.py")
TTL_S = 2


class Procs:
    """Helper processes started by a test, all killed at its end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``coord_proc.py`` with ``args``; its output goes to a log file."""
        log = (self.root / f"proc-{len(self.started)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, HELPER, *args], stdout=log, stderr=log)
        log.close()
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        """Kill and reap everything still running (a stopped process is continued first)."""
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start helper processes; kill them after the test."""
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def _ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_paused_generator_never_issues_with_its_old_id_after_takeover(
    etcd: EtcdCluster, procs: Procs, tmp_path: Path
) -> None:
    """A generator stopped past its TTL loses its id to another and, continued, never uses it."""
    endpoints = ",".join(etcd.endpoints)
    out_a, out_b = tmp_path / "a.ids", tmp_path / "b.ids"
    a = procs.spawn("generate", endpoints, str(out_a), str(tmp_path / "a"), str(TTL_S))
    _wait_for(lambda: len(_ids(out_a)) > 100, 20, "generator A to issue IDs")
    assert {decode(i).workshop_id for i in _ids(out_a)} == {0}

    os.kill(a.pid, signal.SIGSTOP)
    time.sleep(TTL_S + 1.5)  # past the TTL and etcd's expiry sweep
    b = procs.spawn("generate", endpoints, str(out_b), str(tmp_path / "b"), str(TTL_S))
    _wait_for(lambda: len(_ids(out_b)) > 100, 20, "generator B to issue IDs")
    takeover_ms = min(decode(i).unix_ms for i in _ids(out_b))
    os.kill(a.pid, signal.SIGCONT)
    _wait_for(
        lambda: any(decode(i).workshop_id != 0 for i in _ids(out_a)),
        20,
        "generator A to resume with another workshop id",
    )
    time.sleep(1.0)  # both issue side by side for a while
    for proc in (a, b):
        proc.terminate()
        proc.wait(10)

    ids_a, ids_b = _ids(out_a), _ids(out_b)
    assert len(set(ids_a) | set(ids_b)) == len(ids_a) + len(ids_b), "duplicate IDs"
    assert {decode(i).workshop_id for i in ids_b} == {0}
    old_after = [
        i for i in ids_a if decode(i).workshop_id == 0 and decode(i).unix_ms >= takeover_ms
    ]
    assert old_after == [], "A issued with workshop id 0 after B took it"
    assert {decode(i).workshop_id for i in ids_a} == {0, 1}


async def test_killed_instance_leaves_registry_within_one_ttl(
    etcd: EtcdCluster, procs: Procs
) -> None:
    """kill -9 of a registered process removes its registration within one lease TTL."""
    proc = procs.spawn("register", ",".join(etcd.endpoints), "victim", str(TTL_S))
    async with EtcdClient(etcd.endpoints) as client:
        resolver = ServiceResolver(client, cache_s=0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not await resolver.instances("probe"):
            assert loop.time() < deadline, "the instance never registered"
            await asyncio.sleep(0.05)
        proc.kill()
        killed = loop.time()
        while await resolver.instances("probe"):
            assert loop.time() - killed < TTL_S + 3, "the dead instance stayed registered"
            await asyncio.sleep(0.05)
        gone_after = loop.time() - killed
    # One TTL, plus etcd's 500 ms expiry sweep and this poll.
    assert gone_after <= TTL_S + 0.6


async def test_election_and_discovery_survive_killing_the_etcd_leader(
    etcd_cluster: EtcdCluster,
) -> None:
    """With the etcd leader member killed, registrations stay, a leader leads, campaigns finish."""
    settings = CoordSettings(endpoints=etcd_cluster.endpoints, lease_ttl_s=5, health_interval_s=0.2)
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=2) as client:
        registrar = ServiceRegistrar(
            client,
            settings,
            services={"probe": lambda: Readiness(True)},
            instance_id="survivor",
            address="http://127.0.0.1:1",
            version="test",
        )
        await registrar.start()
        election = Election(client, "matcher", ttl_s=3)
        leadership = await election.campaign("first")
        waiting = asyncio.create_task(election.campaign("second"))
        await asyncio.sleep(0.5)  # "second" is queued behind "first"
        assert not waiting.done()

        await asyncio.to_thread(etcd_cluster.leader().kill)
        await asyncio.to_thread(etcd_cluster.leader, 15.0)  # a new etcd leader is elected

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        current = leadership
        while True:  # whoever leads now (first, or second if first's lease lapsed) can write
            with contextlib.suppress(Unavailable):  # etcd still settling: retry
                if current.valid() and await current.put(b"/northpole/test/fenced", b"ok"):
                    break
            if waiting.done():
                current = waiting.result()
            assert loop.time() < deadline, "no leader could act after the etcd leader died"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        listed = await ServiceResolver(client, cache_s=0).instances("probe")
        assert [i.instance_id for i in listed] == ["survivor"]
        assert registrar.registered()

        await current.resign()
        if current is leadership:
            current = await asyncio.wait_for(waiting, timeout=10)
            assert current.candidate == "second"
            await current.resign()
        await registrar.stop()
