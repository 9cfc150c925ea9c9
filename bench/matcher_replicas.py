"""Matcher replicas: leader failover and the cost of the two-phase commit, on a 3-member etcd.

Cases (one JSON line each on stdout):

* ``matcher.failover``: three ``northpole matcher`` replica processes (default
  settings: election TTL 1 s); the leader is killed with ``SIGKILL`` ``--kills``
  times. Each sample is the time from the kill until a write sent to a
  surviving replica (create an exchange, forwarded to the leader) succeeds:
  the new leader was elected, recovered and serves. The killed replica is
  restarted between kills. Target: p99 under 2 s.
* ``matcher.twophase_commit``: the two-phase commit of ``n`` sealed matches
  for 10,000 and 100,000 participants, in process on the etcd store (default
  etcd limits: 128 operations a transaction): prepare (batches of 128, 4 in
  flight), three votes, and the one commit transaction; then the clean-up of a
  discarded proposal of the same size. Sealing is done before the clock starts.
  Target: 100,000 under 10 s.

Run: ``.venv/bin/python bench/matcher_replicas.py [--kills 20] [--sizes 10000,100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.append(str(_BENCH_DIR))

from _common import console, emit, free_port  # noqa: E402
from coord import etcd_cluster, percentile  # noqa: E402
from northpole.core.auth import Role, TokenService  # noqa: E402
from northpole.core.clock import SystemClock  # noqa: E402
from northpole.core.logging import configure_logging  # noqa: E402
from northpole.core.settings import AuthSettings  # noqa: E402
from northpole.exchange import keys  # noqa: E402
from northpole.exchange.crypto import new_private_key, seal_match  # noqa: E402
from northpole.exchange.etcd_store import EtcdExchangeStore  # noqa: E402
from northpole.exchange.keys import ExchangeRecord  # noqa: E402
from northpole.exchange.model import Exchange, Matching, Phase  # noqa: E402
from northpole.exchange.replica_keys import YES, VoteRecord  # noqa: E402
from northpole.exchange.store import Put  # noqa: E402
from northpole.exchange.twophase import TwoPhaseCommit  # noqa: E402

SECRET = secrets.token_hex(32)
_SPAWN = "from northpole.cli.matcher_commands import app; app(prog_name='northpole matcher')"
READY_S = 30.0


class Replica:
    """One replica process on a free port."""

    def __init__(self, root: Path, number: int, endpoints: list[str]) -> None:
        self.number = number
        self.port = free_port()
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NORTHPOLE_")}
        self.env.update(
            NORTHPOLE_COORD__ENDPOINTS=json.dumps(endpoints),
            NORTHPOLE_AUTH__SECRET=SECRET,
            NORTHPOLE_DATA_DIR=str(root / f"replica-{number}"),
            NORTHPOLE_HTTP__PORT=str(self.port),
            NORTHPOLE_LOG_LEVEL="WARNING",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn it and wait for /readyz."""
        log = (self.root / f"replica-{self.number}.log").open("ab")
        argv = [sys.executable, "-c", _SPAWN, "serve", "--replica", str(self.number)]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)
        log.close()
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"replica {self.number} did not become ready")

    def leads(self) -> bool:
        """Whether its metrics say it leads."""
        try:
            text = httpx.get(self.url + "/metrics", timeout=1).text
        except httpx.HTTPError:
            return False
        return 'consensus_is_leader{election="matcher"} 1.0' in text

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _leader(replicas: list[Replica]) -> Replica:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        leading = [r for r in replicas if r.leads()]
        if len(leading) == 1:
            return leading[0]
        time.sleep(0.05)
    raise RuntimeError("no single matcher leader")


def failover(root: Path, endpoints: list[str], kills: int) -> dict[str, Any]:
    """Kill the leader ``kills`` times; time until a forwarded write succeeds again."""
    token = TokenService(SECRET.encode(), AuthSettings()).issue(sub="bench", role=Role.OPERATOR)
    body = {"name": "failover", "year": 2026, "region": "north", "rules": {}}
    replicas = [Replica(root, n, endpoints) for n in range(3)]
    samples: list[float] = []
    try:
        for replica in replicas:
            replica.start()
        for kill in range(kills):
            leader = _leader(replicas)
            survivor = next(r for r in replicas if r is not leader)
            leader.kill()
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < 30:
                try:
                    answer = httpx.post(
                        survivor.url + "/api/v1/exchanges",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=15,
                    )
                    if answer.status_code == 201:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            else:
                raise RuntimeError("no write succeeded within 30 s of the kill")
            samples.append(time.monotonic() - killed_at)
            console.print(f"failover {kill + 1}/{kills}: {samples[-1]:.3f} s")
            leader.start()
    finally:
        for replica in replicas:
            replica.kill()
    return {
        "case": "matcher.failover",
        "kills": kills,
        "p50_s": round(percentile(samples, 0.5), 3),
        "p99_s": round(percentile(samples, 0.99), 3),
        "max_s": round(max(samples), 3),
        "target_p99_s": 2.0,
    }


async def twophase(endpoints: list[str], size: int) -> dict[str, Any]:
    """Prepare, vote and commit ``size`` sealed matches; then discard a proposal of that size."""
    store = await EtcdExchangeStore.connect(endpoints, root="/northpole", timeout_s=30)
    clock = SystemClock()
    public = bytes(new_private_key().public_key)
    exchange = Exchange(
        id=str(10**15 + size),
        name="bench",
        year=2026,
        region="north",
        organizer="bench",
        phase=Phase.MATCHING,
    )
    ids = [f"elf-{i:06d}" for i in range(size)]
    sealed = [seal_match(exchange.id, g, ids[(i + 1) % size], public) for i, g in enumerate(ids)]
    record = ExchangeRecord(exchange=exchange, participants=size, matching_since_ms=clock.now_ms())
    state_key = keys.state_key(exchange.year, exchange.id)
    result = await store.txn([], [Put(state_key, keys.encode_state(record))])
    state = await store.get(state_key)
    assert state is not None and result.succeeded
    tpc = TwoPhaseCommit(store, clock=clock)
    matching = Matching(pairs={}, cost=0.0)
    try:
        started = time.perf_counter()
        prepared = await tpc.prepare(
            record, state, sealed, matching, leader="bench", token=0, fence=None
        )
        prepared_s = time.perf_counter() - started
        for replica in range(3):
            vote = VoteRecord(replica, YES, 0, 0.0, 0.0)
            await tpc.record_vote(exchange, prepared.kv, vote)
        voted_s = time.perf_counter() - started
        flip = time.perf_counter()
        committed = await tpc.commit(record, state, prepared, fence=None)
        commit_txn_s = time.perf_counter() - flip
        total_s = time.perf_counter() - started
        assert committed is not None
        # the clean-up of an aborted proposal of the same size
        other = await store.get(state_key)
        assert other is not None
        again = await tpc.prepare(
            committed, other, sealed, matching, leader="bench", token=0, fence=None
        )
        gc_started = time.perf_counter()
        await tpc.discard(exchange, again.record.proposal, fence=None)
        discard_s = time.perf_counter() - gc_started
    finally:
        await store.close()
    return {
        "case": "matcher.twophase_commit",
        "participants": size,
        "batch_ops": tpc.batch_ops,
        "prepare_s": round(prepared_s, 3),
        "votes_s": round(voted_s - prepared_s, 3),
        "commit_txn_ms": round(commit_txn_s * 1000, 2),
        "total_s": round(total_s, 3),
        "discard_s": round(discard_s, 3),
        "target_total_s_at_100000": 10.0,
    }


def main() -> None:
    """Parse arguments and run the cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--heartbeat-ms", type=int, default=50)
    parser.add_argument("--election-ms", type=int, default=500)
    parser.add_argument("--skip-failover", action="store_true")
    args = parser.parse_args()
    configure_logging(service="bench-matcher", level="WARNING", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="np-bench-matcher-") as tmp:
        root = Path(tmp)
        with etcd_cluster(root, 3, args.heartbeat_ms, args.election_ms) as endpoints:
            for size in (int(s) for s in args.sizes.split(",") if s):
                record = asyncio.run(twophase(endpoints, size))
                emit(record)
            if not args.skip_failover and args.kills > 0:
                record = failover(root, endpoints, args.kills)
                record.update(heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms)
                emit(record)


if __name__ == "__main__":
    main()
