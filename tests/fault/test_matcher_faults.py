"""Matcher replicas under faults: kill -9 the leader at each two-phase step; kill the etcd leader.

Replica 0 starts alone with a failpoint (it stops for good at one step of the
two-phase commit), becomes the leader, then replicas 1 and 2 join. A match
request runs until the leader reaches the step; the test kills it with
``SIGKILL`` there. The new leader must leave exactly one committed matching
(if a majority had voted yes on a complete proposal) or none, with every
replica agreeing and the exchange usable. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _path in (str(_TESTS), str(_TESTS / "integration" / "exchange_replicas")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from replica_procs import (  # noqa: E402
    Exchange,
    ReplicaCluster,
    assert_one_valid_matching,
    bearer,
    commitments_root,
    create_exchange,
    organizer_token,
    revealed_pairs,
    status,
    wait_for,
)

from etcd_servers import EtcdCluster, etcd_cluster  # noqa: E402
from northpole.exchange import keys  # noqa: E402
from northpole.exchange.etcd_store import EtcdExchangeStore  # noqa: E402

__all__ = ["etcd_cluster"]

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SIZE = 12
#: Small batches so that "during prepare" lies between two batches.
SLOW_PREPARE = {"NORTHPOLE_MATCHER__BATCH_OPS": "3", "NORTHPOLE_MATCHER__BATCH_CONCURRENCY": "1"}


@pytest.fixture
def replicas(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[ReplicaCluster]:
    """Replica processes on a 3-member etcd, killed after the test."""
    cluster = ReplicaCluster(tmp_path / "replicas", etcd_cluster.endpoints)
    try:
        yield cluster
    finally:
        cluster.kill_all()


def post_match_in_background(url: str, exchange: Exchange) -> threading.Thread:
    """Send the match request from a thread (its answer is lost when the leader dies)."""

    def run() -> None:
        try:
            httpx.post(
                f"{url}/api/v1/exchanges/{exchange.id}/match",
                headers=bearer(organizer_token(exchange)),
                timeout=60,
            )
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stored_keys(endpoints: list[str], prefix: str) -> list[str]:
    """Every store key under ``prefix`` (read straight from etcd)."""

    async def read() -> list[str]:
        store = await EtcdExchangeStore.connect(endpoints, root="/northpole")
        try:
            return [kv.key for kv in (await store.range(prefix)).kvs]
        finally:
            await store.close()

    return asyncio.run(read())


def settled_phase(replicas: ReplicaCluster, exchange: Exchange) -> str:
    """Wait until every live replica reads the same phase other than MATCHING; return it."""
    phases: set[str] = set()

    def settled() -> bool:
        try:
            phases.clear()
            phases.update(status(r.url, exchange)["phase"] for r in replicas.alive())
        except (httpx.HTTPError, AssertionError):
            return False
        return len(phases) == 1 and "MATCHING" not in phases

    wait_for(settled, "the exchange to leave MATCHING on every replica", timeout_s=30)
    return phases.pop()


def start_with_failpoint(replicas: ReplicaCluster, step: str) -> None:
    """Replica 0 leads with a failpoint at ``step``; replicas 1 and 2 follow."""
    first = replicas.start(replicas.make(0, {"NORTHPOLE_MATCHER__FAILPOINT": step, **SLOW_PREPARE}))
    assert replicas.leader() is first
    for number in (1, 2):
        replicas.start(replicas.make(number, SLOW_PREPARE))


def check_one_or_no_matching(replicas: ReplicaCluster, exchange: Exchange, phase: str) -> None:
    """COMMITTED: one matching everybody reads alike; REGISTRATION: nothing stored, match works."""
    ex_prefix = keys.exchange_prefix(2026, exchange.id)
    endpoints = replicas.endpoints
    if phase == "REGISTRATION":
        assert stored_keys(endpoints, ex_prefix + "proposal/") == []
        assert stored_keys(endpoints, ex_prefix + "sealed/") == []
        url = replicas.alive()[0].url
        again = httpx.post(
            f"{url}/api/v1/exchanges/{exchange.id}/match",
            headers=bearer(organizer_token(exchange)),
            timeout=60,
        )
        assert again.status_code == 200, again.text
    roots = {status(r.url, exchange)["commitment_root"] for r in replicas.alive()}
    assert len(roots) == 1
    assert {status(r.url, exchange)["phase"] for r in replicas.alive()} == {"COMMITTED"}
    for replica in replicas.alive():
        assert commitments_root(replica.url, exchange) in roots
    assert_one_valid_matching(revealed_pairs(replicas.alive()[-1].url, exchange), exchange.keys)
    assert len(stored_keys(endpoints, ex_prefix + "proposal/")) == 1
    assert len(stored_keys(endpoints, ex_prefix + "sealed/")) == len(exchange.keys)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("prepare", "REGISTRATION"),
        ("prepare_batch", "REGISTRATION"),
        ("prepared", "REGISTRATION"),
        ("voted", "COMMITTED"),
        ("committed", "COMMITTED"),
    ],
)
def test_killing_the_leader_at_a_two_phase_step_leaves_one_matching_or_none(
    replicas: ReplicaCluster, step: str, expected: str
) -> None:
    """A leader killed at any step: the new leader finishes a voted proposal or aborts the rest."""
    start_with_failpoint(replicas, step)
    leader = replicas.replicas[0]
    exchange = create_exchange(replicas.replicas[1].url, SIZE)
    post_match_in_background(replicas.replicas[2].url, exchange)
    wait_for(lambda: "failpoint reached" in leader.log(), f"the leader to reach {step}")
    leader.kill()
    new_leader = replicas.leader()
    assert new_leader is not leader
    phase = settled_phase(replicas, exchange)
    assert phase == expected
    check_one_or_no_matching(replicas, exchange, phase)


def _retry_later(answer: httpx.Response) -> bool:
    """Whether the answer asks the client to try the match again."""
    if answer.status_code == 503:
        return True
    return answer.status_code == 409 and answer.json()["error"]["code"] == "proposal_rejected"


def test_killing_the_etcd_leader_keeps_the_matchers_electing_and_committing(
    replicas: ReplicaCluster, etcd_cluster: EtcdCluster
) -> None:
    """With the etcd leader member killed, a matcher leads and a match commits on every replica."""
    for number in range(3):
        replicas.start(replicas.make(number))
    replicas.leader()
    exchange = create_exchange(replicas.replicas[0].url, 6)
    etcd_cluster.leader().kill()
    started = time.monotonic()
    replicas.leader(timeout_s=20)
    wait_for(lambda: all(r.ready() for r in replicas.alive()), "replicas ready", timeout_s=20)
    answer = None
    while time.monotonic() - started < 30:
        answer = httpx.post(
            f"{replicas.replicas[1].url}/api/v1/exchanges/{exchange.id}/match",
            headers=bearer(organizer_token(exchange)),
            timeout=60,
        )
        # While etcd elects, writes may see 503; and the followers' candidacies (their
        # leases) may be gone for a moment, so too few replicas vote: 409 "match again".
        if not _retry_later(answer):
            break
        time.sleep(0.2)
    assert answer is not None and answer.status_code == 200, answer.text if answer else None
    check_one_or_no_matching(replicas, exchange, "COMMITTED")
