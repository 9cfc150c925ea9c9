"""The two-phase commit and the followers' judgement, on the SQLite store (no server needed)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from northpole.core.clock import FakeClock
from northpole.core.errors import Conflict
from northpole.exchange import keys
from northpole.exchange import replica_keys as rk
from northpole.exchange.crypto import SealedMatch, new_private_key, public_key_b64, seal_match
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.matching import cost_of
from northpole.exchange.model import Exchange, Matching, Participant, Phase, Rules
from northpole.exchange.replica_keys import NO, YES, VoteRecord
from northpole.exchange.sqlite_store import SqliteExchangeStore
from northpole.exchange.store import Compare, KeyValue, Put
from northpole.exchange.twophase import PlainProposal, TwoPhaseCommit, judge, matches_prefix

FENCE_KEY = "/elections/matcher/0000000000000001"
IDS = [f"elf-{i}" for i in range(7)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteExchangeStore]:
    """A fresh SQLite exchange store."""
    opened = await SqliteExchangeStore(tmp_path / "x.db").open()
    yield opened
    await opened.close()


def people() -> list[Participant]:
    """Seven participants in one region, with keys."""
    return [
        Participant(id=pid, region="north", budget=20, public_key=public_key_b64(new_private_key()))
        for pid in IDS
    ]


def shift() -> dict[str, str]:
    """Everybody gives to the next one."""
    return {g: IDS[(i + 1) % len(IDS)] for i, g in enumerate(IDS)}


def sealed_for(exchange_id: str, pairs: dict[str, str]) -> tuple[list[SealedMatch], PlainProposal]:
    """Seal ``pairs`` with known salts."""
    salts = {g: secrets.token_bytes(32) for g in pairs}
    public = bytes(new_private_key().public_key)
    sealed = [seal_match(exchange_id, g, r, public, salt=salts[g]) for g, r in pairs.items()]
    return sealed, PlainProposal(pairs=pairs, salts=salts)


async def matching_exchange(
    store: SqliteExchangeStore, clock: FakeClock
) -> tuple[ExchangeRecord, KeyValue, KeyValue]:
    """An exchange in MATCHING and a leader key; return the record, state key and fence key."""
    ex = Exchange(id="42", name="t", year=2026, region="north", organizer="o", phase=Phase.MATCHING)
    record = ExchangeRecord(exchange=ex, participants=len(IDS), matching_since_ms=clock.now_ms())
    state_key = keys.state_key(ex.year, ex.id)
    await store.txn(
        [],
        [
            Put(state_key, keys.encode_state(record)),
            Put(keys.index_key(ex.id), keys.encode_index(record)),
            Put(FENCE_KEY, b"leader"),
        ],
    )
    state, fence = await store.get(state_key), await store.get(FENCE_KEY)
    assert state is not None and fence is not None
    return record, state, fence


async def test_nothing_is_readable_until_the_commit_flips_the_state(
    store: SqliteExchangeStore,
) -> None:
    """Prepared matches are invisible to readers; after the commit all of them are."""
    clock = FakeClock(1_000)
    record, state, fence_kv = await matching_exchange(store, clock)
    fence = Compare(FENCE_KEY, fence_kv.mod_revision)
    tpc = TwoPhaseCommit(store, clock=clock, batch_ops=2)
    sealed, _ = sealed_for("42", shift())
    prepared = await tpc.prepare(
        record, state, sealed, Matching({}, 3.0), leader="l", token=1, fence=fence
    )
    ex = record.exchange
    assert (await store.range(await matches_prefix(store, ex))).kvs == []
    for replica in (0, 1):
        await tpc.record_vote(ex, prepared.kv, VoteRecord(replica, YES, 0, 3.0, 3.0))
    committed = await tpc.commit(record, state, prepared, fence=fence)
    assert committed is not None and committed.phase is Phase.COMMITTED
    rows = (await store.range(await matches_prefix(store, ex))).kvs
    assert len(rows) == len(IDS)
    assert committed.commitment_root == prepared.record.commitment_root


async def test_a_deposed_leader_cannot_prepare_or_commit(store: SqliteExchangeStore) -> None:
    """Once the leader key is gone, the fenced writes fail and nothing commits."""
    clock = FakeClock(1_000)
    record, state, fence_kv = await matching_exchange(store, clock)
    fence = Compare(FENCE_KEY, fence_kv.mod_revision)
    tpc = TwoPhaseCommit(store, clock=clock)
    sealed, _ = sealed_for("42", shift())
    prepared = await tpc.prepare(
        record, state, sealed, Matching({}, 0.0), leader="l", token=1, fence=fence
    )
    await store.txn([], [Put(FENCE_KEY, b"next leader")])
    assert await tpc.commit(record, state, prepared, fence=fence) is None
    with pytest.raises(Conflict):
        await tpc.prepare(
            record, state, sealed, Matching({}, 0.0), leader="l", token=1, fence=fence
        )
    current = await store.get(state.key)
    assert (
        current is not None
        and keys.decode_state(current.key, current.value).phase is Phase.MATCHING
    )


async def test_recovery_commits_a_prepared_proposal_a_majority_accepted(
    store: SqliteExchangeStore,
) -> None:
    """A new leader finishes a complete proposal with two yes votes of three."""
    clock = FakeClock(1_000)
    record, state, _ = await matching_exchange(store, clock)
    tpc = TwoPhaseCommit(store, clock=clock)
    sealed, _ = sealed_for("42", shift())
    prepared = await tpc.prepare(
        record, state, sealed, Matching({}, 0.0), leader="l", token=1, fence=None
    )
    ex = record.exchange
    await tpc.record_vote(ex, prepared.kv, VoteRecord(0, YES, 0, 0.0, 0.0))
    await tpc.record_vote(ex, prepared.kv, VoteRecord(1, NO, 2, 0.0, 0.0))
    await tpc.record_vote(ex, prepared.kv, VoteRecord(2, YES, 0, 0.0, 0.0))
    done = await tpc.resolve(record, state, fence=None)
    assert done is not None and done.phase is Phase.COMMITTED
    pointer = await store.get(rk.committed_key(ex.year, ex.id))
    assert pointer is not None
    assert rk.decode_committed(pointer.key, pointer.value) == prepared.record.proposal


async def test_recovery_aborts_a_proposal_without_a_majority_and_deletes_it(
    store: SqliteExchangeStore,
) -> None:
    """One yes vote of three is not enough: back to REGISTRATION, proposal keys gone."""
    clock = FakeClock(1_000)
    record, state, _ = await matching_exchange(store, clock)
    tpc = TwoPhaseCommit(store, clock=clock, batch_ops=3)
    sealed, _ = sealed_for("42", shift())
    prepared = await tpc.prepare(
        record, state, sealed, Matching({}, 0.0), leader="l", token=1, fence=None
    )
    ex = record.exchange
    await tpc.record_vote(ex, prepared.kv, VoteRecord(0, YES, 0, 0.0, 0.0))
    done = await tpc.resolve(record, state, fence=None)
    assert done is not None and done.phase is Phase.REGISTRATION
    prefix = keys.exchange_prefix(ex.year, ex.id)
    left = [kv.key for kv in (await store.range(prefix)).kvs]
    assert left == [keys.state_key(ex.year, ex.id)]


def test_judge_accepts_a_valid_optimal_proposal() -> None:
    """A valid matching whose commitments match and whose cost is optimal gets a yes."""
    participants = people()
    sealed, plain = sealed_for("42", shift())
    cost = cost_of(participants, Rules(), plain.pairs)
    proposal = rk.ProposalRecord("p", "42", "l", 1, 5, len(IDS), cost, True, "root", 0, True)
    verdict = judge(
        exchange_id="42",
        participants=participants,
        rules=Rules(),
        plain=plain,
        sealed=sealed,
        proposal=proposal,
        reference=Matching({}, cost, True),
        tolerance=0.0,
    )
    assert verdict.yes and verdict.problems == 0


def test_judge_rejects_a_proposal_whose_stored_commitments_differ() -> None:
    """Plaintext that is not what was stored (another receiver) gets a no."""
    participants = people()
    sealed, plain = sealed_for("42", shift())
    swapped = dict(plain.pairs)
    swapped[IDS[0]], swapped[IDS[1]] = swapped[IDS[1]], swapped[IDS[0]]
    proposal = rk.ProposalRecord("p", "42", "l", 1, 5, len(IDS), 0.0, True, "root", 0, True)
    verdict = judge(
        exchange_id="42",
        participants=participants,
        rules=Rules(),
        plain=PlainProposal(pairs=swapped, salts=plain.salts),
        sealed=sealed,
        proposal=proposal,
        reference=Matching({}, 0.0, True),
        tolerance=0.0,
    )
    assert not verdict.yes


def test_judge_rejects_a_proposal_breaking_a_hard_constraint() -> None:
    """Somebody giving to themselves is a no whatever else holds."""
    participants = people()
    pairs = shift()
    pairs[IDS[0]] = IDS[0]
    sealed, plain = sealed_for("42", pairs)
    proposal = rk.ProposalRecord("p", "42", "l", 1, 5, len(IDS), 0.0, True, "root", 0, True)
    verdict = judge(
        exchange_id="42",
        participants=participants,
        rules=Rules(),
        plain=plain,
        sealed=sealed,
        proposal=proposal,
        reference=Matching({}, 0.0, True),
        tolerance=0.0,
    )
    assert not verdict.yes and verdict.problems >= 1


def test_judge_rejects_a_cost_above_the_followers_optimum() -> None:
    """A proposal claiming optimality with a higher cost than the follower's optimum is a no."""
    participants = people()
    sealed, plain = sealed_for("42", shift())
    cost = cost_of(participants, Rules(), plain.pairs)
    proposal = rk.ProposalRecord("p", "42", "l", 1, 5, len(IDS), cost, True, "root", 0, True)
    verdict = judge(
        exchange_id="42",
        participants=participants,
        rules=Rules(),
        plain=plain,
        sealed=sealed,
        proposal=proposal,
        reference=Matching({}, cost - 1.0, True),
        tolerance=0.5,
    )
    assert not verdict.yes


def test_the_plaintext_proposal_does_not_show_in_its_repr() -> None:
    """A PlainProposal logged by mistake reveals no pair."""
    plain = PlainProposal(pairs={"holly": "ivy"}, salts={"holly": b"x" * 32})
    assert "ivy" not in repr(plain) and "holly" not in repr(plain)
