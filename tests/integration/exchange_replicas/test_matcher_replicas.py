"""Three matcher replicas on a 3-member etcd: forwarding, votes, one commit everybody agrees on."""

from __future__ import annotations

import httpx
import pytest
from replica_procs import (
    ReplicaCluster,
    assert_one_valid_matching,
    bearer,
    commitments_root,
    create_exchange,
    organizer_token,
    revealed_pairs,
    status,
)

pytestmark = pytest.mark.integration


def start_three(replicas: ReplicaCluster) -> None:
    """Start replicas 0, 1 and 2 and wait for a leader."""
    for number in range(3):
        replicas.start(replicas.make(number))
    replicas.leader()


def test_a_match_sent_to_a_follower_commits_once_and_every_replica_agrees(
    replicas: ReplicaCluster,
) -> None:
    """Writes via a follower reach the leader; the committed matching reads the same anywhere."""
    start_three(replicas)
    leader = replicas.leader()
    follower = next(r for r in replicas.alive() if r is not leader)
    exchange = create_exchange(follower.url, 8)
    answer = httpx.post(
        f"{follower.url}/api/v1/exchanges/{exchange.id}/match",
        headers=bearer(organizer_token(exchange)),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["phase"] == "COMMITTED"
    seen = {r.number: status(r.url, exchange) for r in replicas.alive()}
    assert {s["phase"] for s in seen.values()} == {"COMMITTED"}
    assert len({s["commitment_root"] for s in seen.values()}) == 1
    pairs = revealed_pairs(follower.url, exchange)
    assert_one_valid_matching(pairs, exchange.keys)
    assert commitments_root(leader.url, exchange) == seen[leader.number]["commitment_root"]
    followers = [r for r in replicas.alive() if r is not leader]
    yes = 'matcher_votes_total{vote="yes"} 1.0'
    assert any(yes in httpx.get(r.url + "/metrics").text for r in followers)


def test_a_second_match_request_is_refused_after_the_commit(replicas: ReplicaCluster) -> None:
    """A committed exchange answers 409 to another match, from any replica."""
    start_three(replicas)
    exchange = create_exchange(replicas.replicas[0].url, 4)
    headers = bearer(organizer_token(exchange))
    url = replicas.replicas[1].url
    assert httpx.post(f"{url}/api/v1/exchanges/{exchange.id}/match", headers=headers, timeout=60)
    again = httpx.post(
        f"{replicas.replicas[2].url}/api/v1/exchanges/{exchange.id}/match",
        headers=headers,
        timeout=60,
    )
    assert again.status_code == 409, again.text
