"""Benchmark of the coordination layer on real etcd: leader failover and workshop-id leases.

Run from the repository root::

    .venv/bin/python bench/coord.py              # about a minute
    .venv/bin/python bench/coord.py --kills 5    # a shorter failover run

It starts its own three-member etcd cluster on free 127.0.0.1 ports (in a
temporary directory, heartbeat ``--heartbeat-ms``, election timeout
``--election-ms``) and stops it at the end. Cases, one JSON line each:

``coord.failover``
    ``--candidates`` processes campaign in election ``bench`` with the default
    ``coord`` settings (``election_ttl_s`` 1); the leader writes a fenced key
    as soon as it wins and every 50 ms after. The bench kills the leader
    process with SIGKILL and times until a *different* candidate's first
    fenced write is seen (a watch on the key), ``--kills`` times, starting a
    new candidate after each kill. p50/p99 in seconds; target p99 < 2 s.
``coord.workshop_acquire`` and ``coord.workshop_acquire_100_taken``
    ``acquire()`` + ``release()`` of the etcd workshop allocator, ``--acquires``
    times, with no other id held, then with ids 0-99 held: the time of
    ``acquire()`` alone (lease grant, range of held ids, one create-if-absent
    transaction), p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# The script's directory comes first on sys.path, and bench/queue.py would
# shadow the standard library's ``queue``: move bench/ to the end.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.append(str(_BENCH_DIR))

from _common import console, emit, ensure_debs, free_port  # noqa: E402
from northpole.coord import keys  # noqa: E402
from northpole.coord.client import EtcdClient  # noqa: E402
from northpole.coord.election import Election  # noqa: E402
from northpole.coord.settings import CoordSettings  # noqa: E402
from northpole.coord.workshop import EtcdWorkshopAllocator  # noqa: E402
from northpole.core.logging import configure_logging  # noqa: E402

ACT_KEY = b"/northpole/bench/acts"
ACT_EVERY_S = 0.05


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0-1) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


@contextmanager
def etcd_cluster(root: Path, size: int, heartbeat_ms: int, election_ms: int) -> Iterator[list[str]]:
    """Run a ``size``-member etcd cluster under ``root``; yield its client URLs."""
    etcd = shutil.which("etcd")
    if etcd is None:
        ensure_debs("etcd-server")
        etcd = shutil.which("etcd") or "etcd"
    members = [(f"m{i}", free_port(), free_port()) for i in range(size)]
    initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, _, peer in members)
    procs = []
    try:
        for name, client, peer in members:
            log = (root / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        etcd,
                        f"--name={name}",
                        f"--data-dir={root / name}",
                        f"--listen-client-urls=http://127.0.0.1:{client}",
                        f"--advertise-client-urls=http://127.0.0.1:{client}",
                        f"--listen-peer-urls=http://127.0.0.1:{peer}",
                        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                        f"--initial-cluster={initial}",
                        "--initial-cluster-state=new",
                        f"--heartbeat-interval={heartbeat_ms}",
                        f"--election-timeout={election_ms}",
                        "--log-level=warn",
                        "--logger=zap",
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
            log.close()
        urls = [f"http://127.0.0.1:{client}" for _, client, _ in members]
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).json().get("health") == "true":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd at {url} did not become healthy")
                time.sleep(0.05)
        yield urls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


# -- candidate process ------------------------------------------------------


async def candidate(endpoints: list[str], name: str) -> None:
    """Campaign with default settings; once leading, write a fenced key every 50 ms."""
    settings = CoordSettings(endpoints=endpoints)
    async with EtcdClient(endpoints, timeout_s=settings.request_timeout_s) as client:
        election = Election(
            client,
            "bench",
            root=settings.prefix,
            ttl_s=settings.election_ttl_s,
            margin_ratio=settings.safety_margin_ratio,
        )
        while True:
            try:
                leadership = await election.campaign(name)
            except Exception:  # etcd hiccup: campaign again
                await asyncio.sleep(0.1)
                continue
            while leadership.valid():
                with contextlib.suppress(Exception):  # lost or etcd failing: the loop decides
                    await leadership.put(ACT_KEY, name.encode())
                await asyncio.sleep(ACT_EVERY_S)


def spawn_candidate(endpoints: list[str], index: int) -> subprocess.Popen[bytes]:
    """Start one candidate process."""
    return subprocess.Popen(
        [sys.executable, __file__, "--candidate", ",".join(endpoints), f"c{index}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def failover(endpoints: list[str], kills: int, candidates: int) -> dict[str, Any]:
    """Kill the leading candidate ``kills`` times; time until another one acts."""
    procs = {f"c{i}": spawn_candidate(endpoints, i) for i in range(candidates)}
    next_index = candidates
    times: list[float] = []
    try:
        async with EtcdClient(endpoints) as client:
            for _ in range(kills):
                leader = await _acting_leader(client, timeout_s=30)
                start_rev = (await client.get_prefix(ACT_KEY)).revision + 1
                async with client.watch_prefix(ACT_KEY, start_revision=start_rev) as watch:
                    victim = procs.pop(leader)
                    killed = time.monotonic()
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait(10)
                    took = await asyncio.wait_for(_other_acts(watch, leader, killed), 30)
                times.append(took)
                console.print(f"failover {len(times)}/{kills}: {took:.3f} s ({leader} killed)")
                procs[f"c{next_index}"] = spawn_candidate(endpoints, next_index)
                next_index += 1
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
    p99 = percentile(times, 0.99)
    return {
        "case": "coord.failover",
        "n": len(times),
        "p50_s": round(statistics.median(times), 3),
        "p99_s": round(p99, 3),
        "max_s": round(max(times), 3),
        "target": 2.0,
        "target_on": "p99_s <",
        "meets_target": p99 < 2.0,
        "election_ttl_s": CoordSettings().election_ttl_s,
    }


async def _acting_leader(client: EtcdClient, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await client.get(ACT_KEY)
        leader = await Election(client, "bench").leader()
        if got is not None and leader is not None and got.value.decode() == leader.candidate:
            return leader.candidate
        await asyncio.sleep(0.05)
    raise RuntimeError("no candidate became leader")


async def _other_acts(watch: Any, old: str, since: float) -> float:
    async for batch in watch:
        for event in batch:
            if event.kind == "PUT" and event.kv.value.decode() != old:
                return time.monotonic() - since
    raise RuntimeError("watch ended")


# -- workshop ids -----------------------------------------------------------


async def acquire_times(endpoints: list[str], n: int, taken: int) -> dict[str, Any]:
    """Time ``n`` acquires of the etcd allocator with ``taken`` ids already held."""
    settings = CoordSettings(endpoints=endpoints, region=f"bench{taken}")
    times: list[float] = []
    async with EtcdClient(endpoints) as client:
        lease_id, _ = await client.grant(300)
        for workshop_id in range(taken):
            key = keys.workshop_key(settings.prefix, settings.region, workshop_id)
            await client.put(key, b"{}", lease=lease_id)
        allocator = EtcdWorkshopAllocator(settings)
        keep = await allocator.acquire()  # keeps the client open between rounds
        for _ in range(n):
            started = time.perf_counter()
            lease = await allocator.acquire()
            times.append(time.perf_counter() - started)
            await allocator.release(lease)
        await allocator.release(keep)
        await client.revoke(lease_id)
    case = "coord.workshop_acquire" + (f"_{taken}_taken" if taken else "")
    ms = [t * 1000 for t in times]
    return {
        "case": case,
        "n": n,
        "taken": taken,
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "rate": round(n / sum(times), 1),
    }


async def run(args: argparse.Namespace) -> None:
    """Run every case against a fresh cluster."""
    with tempfile.TemporaryDirectory(prefix="np-bench-etcd-") as tmp:
        with etcd_cluster(Path(tmp), 3, args.heartbeat_ms, args.election_ms) as endpoints:
            for taken in (0, 100):
                record = await acquire_times(endpoints, args.acquires, taken)
                record.update(heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms)
                emit(record)
            record = await failover(endpoints, args.kills, args.candidates)
            record.update(heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms)
            emit(record)


def main() -> None:
    """Parse arguments and run the benchmark (or one candidate process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--acquires", type=int, default=200)
    parser.add_argument("--heartbeat-ms", type=int, default=50)
    parser.add_argument("--election-ms", type=int, default=500)
    parser.add_argument(
        "--candidate", nargs=2, metavar=("ENDPOINTS", "NAME"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    # stdout carries only the JSON lines
    configure_logging(service="bench-coord", level="WARNING", stream=sys.stderr)
    if args.candidate:
        asyncio.run(candidate(args.candidate[0].split(","), args.candidate[1]))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
