"""The exchange service's lifecycle: create, register, match, commit, cancel, and phase errors.

The matcher is injected (``shift_matcher`` and friends from the support module)
so these tests are about the service around it, not the solve.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from northpole.core.errors import Conflict, Forbidden, InvalidInput, NorthpoleError
from northpole.exchange import keys
from northpole.exchange.crypto import commitment_root, open_match, verify_commitment
from northpole.exchange.model import Infeasible, Phase, Rules
from northpole.exchange.policy import (
    ExchangeNotFound,
    NewExchange,
    ParticipantNotFound,
    WrongPhase,
)
from northpole.exchange.service import ExchangeCommitted
from northpole.exchange.settings import ExchangeSettings
from northpole.exchange.store import Put

from exchange_service_support import (  # isort: skip
    ADMIN,
    ORGANIZER,
    OTHER_OPERATOR,
    GatedMatcher,
    Harness,
    as_participant,
    infeasible_matcher,
    new_exchange,
    running_service,
    shift_matcher,
)


@pytest.fixture
async def h(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running service with the shift matcher."""
    async with running_service(tmp_path) as harness:
        yield harness


async def register_people(h: Harness, exchange_id: str, n: int) -> list[str]:
    """Register ``n`` fresh participants as the organizer; return their ids."""
    people = [h.people.make() for _ in range(n)]
    await h.service.register(exchange_id, people, ORGANIZER, batch=True)
    return [p.id for p in people]


async def test_create_starts_in_registration_with_the_caller_as_organizer(h: Harness) -> None:
    """A new exchange is REGISTRATION, has an id from the id source, and is the caller's."""
    record = await h.service.create(NewExchange(name="Elves", year=2026, region="north"), ORGANIZER)
    assert record.phase is Phase.REGISTRATION
    assert record.exchange.id.isdigit()
    assert record.exchange.organizer == ORGANIZER.sub
    assert (record.participants, record.matches) == (0, 0)
    state = await h.service.store.get(keys.state_key(2026, record.exchange.id))
    assert state is not None


async def test_a_participant_cannot_create_an_exchange(h: Harness) -> None:
    """Creating needs an operator or admin."""
    with pytest.raises(Forbidden):
        await h.service.create(NewExchange(name="x", year=2026, region="n"), as_participant("p"))


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewExchange(name=" ", year=2026, region="north"), "name"),
        (NewExchange(name="x", year=1999, region="north"), "year"),
        (NewExchange(name="x", year=2026, region="north/pole"), "region"),
        (
            NewExchange(name="x", year=2026, region="n", rules=Rules(budget_tolerance=-1.0)),
            "rules.budget_tolerance",
        ),
    ],
)
async def test_bad_exchange_fields_are_named(h: Harness, new: NewExchange, field: str) -> None:
    """Each bad field of a new exchange is InvalidInput naming it."""
    with pytest.raises(InvalidInput) as caught:
        await h.service.create(new, ORGANIZER)
    assert caught.value.field == field


async def test_rules_left_out_take_the_default_budget_tolerance(tmp_path: Path) -> None:
    """Without rules, ``default_budget_tolerance`` from the settings applies."""
    settings = ExchangeSettings(default_budget_tolerance=7.5)
    async with running_service(tmp_path, settings=settings) as h:
        exchange_id = await new_exchange(h.service)
        record = await h.service.get(exchange_id, ORGANIZER)
        assert record.exchange.rules.budget_tolerance == 7.5


async def test_an_unknown_exchange_is_not_found(h: Harness) -> None:
    """Any id that names no exchange, malformed ones included, is ExchangeNotFound (404)."""
    for exchange_id in ("424242", "not-a-number", "1/2"):
        with pytest.raises(ExchangeNotFound):
            await h.service.get(exchange_id, ORGANIZER)


async def test_registration_counts_participants(h: Harness) -> None:
    """The record counts registered participants."""
    exchange_id = await new_exchange(h.service)
    await register_people(h, exchange_id, 3)
    assert (await h.service.get(exchange_id, ORGANIZER)).participants == 3


async def test_a_registered_id_cannot_register_again(h: Harness) -> None:
    """A second registration of an id is Conflict naming ``id``, and stores nothing."""
    exchange_id = await new_exchange(h.service)
    [pid] = await register_people(h, exchange_id, 1)
    with pytest.raises(Conflict) as caught:
        await h.service.register(exchange_id, [h.people.make(pid)], ORGANIZER)
    assert caught.value.field == "id"
    assert (await h.service.get(exchange_id, ORGANIZER)).participants == 1


async def test_a_duplicate_within_one_request_names_its_position(h: Harness) -> None:
    """The same id twice in one batch is InvalidInput on ``participants.1.id``."""
    exchange_id = await new_exchange(h.service)
    one = h.people.make()
    with pytest.raises(InvalidInput) as caught:
        await h.service.register(exchange_id, [one, h.people.make(one.id)], ORGANIZER, batch=True)
    assert caught.value.field == "participants.1.id"


async def test_references_must_name_registered_or_same_batch_people(h: Harness) -> None:
    """Exclusions may name someone in the same batch; an unknown id is refused."""
    exchange_id = await new_exchange(h.service)
    a, b = h.people.make(), h.people.make()
    b = replace(b, exclusions=frozenset({a.id}))
    await h.service.register(exchange_id, [a, b], ORGANIZER, batch=True)
    late = h.people.make(preferences=[a.id, "ghost-of-christmas-past"])
    with pytest.raises(InvalidInput) as caught:
        await h.service.register(exchange_id, [late], ORGANIZER)
    assert caught.value.field == "preferences"
    assert "ghost-of-christmas-past" in caught.value.message


async def test_a_batch_over_the_limit_stores_nobody(tmp_path: Path) -> None:
    """Going past ``max_participants`` refuses the whole request (field ``participants``)."""
    async with running_service(tmp_path, settings=ExchangeSettings(max_participants=3)) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 2)
        with pytest.raises(InvalidInput) as caught:
            await register_people(h, exchange_id, 2)
        assert caught.value.field == "participants"
        assert (await h.service.get(exchange_id, ORGANIZER)).participants == 2
        rows = await h.service.store.range(keys.participants_prefix(2026, exchange_id))
        assert len(rows.kvs) == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"budget": 0.0}, "participants.0.budget"),
        ({"budget": float("nan")}, "participants.0.budget"),
        ({"public_key": "AAAA"}, "participants.0.public_key"),
        ({"public_key": "not base64!"}, "participants.0.public_key"),
        ({"id": "has space"}, "participants.0.id"),
        ({"group": "a/b"}, "participants.0.group"),
    ],
)
async def test_bad_participant_fields_are_named(h: Harness, change: dict, field: str) -> None:
    """Malformed budget, key, id or group: InvalidInput naming the field, nothing stored."""
    exchange_id = await new_exchange(h.service)
    bad = replace(h.people.make(), **change)
    with pytest.raises(InvalidInput) as caught:
        await h.service.register(exchange_id, [bad], ORGANIZER, batch=True)
    assert caught.value.field == field
    assert (await h.service.get(exchange_id, ORGANIZER)).participants == 0


async def test_a_participant_registers_only_themselves(h: Harness) -> None:
    """A participant token registers its own id; registering another id is Forbidden."""
    exchange_id = await new_exchange(h.service)
    me = h.people.make()
    await h.service.register(exchange_id, [me], as_participant(me.id))
    with pytest.raises(Forbidden):
        await h.service.register(exchange_id, [h.people.make()], as_participant(me.id))


async def test_another_operator_cannot_run_someone_elses_exchange(h: Harness) -> None:
    """Only the organizer (or an admin) registers, matches or cancels."""
    exchange_id = await new_exchange(h.service)
    with pytest.raises(Forbidden):
        await h.service.register(exchange_id, [h.people.make()], OTHER_OPERATOR)
    with pytest.raises(Forbidden):
        await h.service.match(exchange_id, OTHER_OPERATOR)
    with pytest.raises(Forbidden):
        await h.service.cancel(exchange_id, OTHER_OPERATOR)
    await h.service.register(exchange_id, [h.people.make()], ADMIN)


async def test_reading_needs_the_organizer_or_a_participant_of_it(h: Harness) -> None:
    """The organizer and registered participants read the exchange; strangers do not."""
    exchange_id = await new_exchange(h.service)
    [pid] = await register_people(h, exchange_id, 1)
    assert (await h.service.get(exchange_id, as_participant(pid))).participants == 1
    for stranger in (as_participant("someone-else"), OTHER_OPERATOR):
        with pytest.raises(Forbidden):
            await h.service.get(exchange_id, stranger)


async def test_update_changes_fields_and_checks_references(h: Harness) -> None:
    """A patch changes the given fields; an unknown reference or an id change is refused."""
    exchange_id = await new_exchange(h.service)
    a, b = await register_people(h, exchange_id, 2)
    updated = await h.service.update_participant(
        exchange_id, a, {"budget": 35.0, "exclusions": frozenset({b})}, as_participant(a)
    )
    assert (updated.budget, updated.exclusions) == (35.0, frozenset({b}))
    assert (await h.service.participant(exchange_id, a, as_participant(a))).budget == 35.0
    with pytest.raises(InvalidInput) as caught:
        await h.service.update_participant(
            exchange_id, a, {"preferences": ("nobody-here",)}, ORGANIZER
        )
    assert caught.value.field == "preferences"
    with pytest.raises(InvalidInput):
        await h.service.update_participant(exchange_id, a, {"id": "new"}, ORGANIZER)
    with pytest.raises(ParticipantNotFound):
        await h.service.update_participant(exchange_id, "missing", {"budget": 1.0}, ORGANIZER)


async def test_removal_drops_references_to_the_removed(h: Harness) -> None:
    """Removing someone drops them from others' exclusions and preferences, and the count."""
    exchange_id = await new_exchange(h.service)
    gone = h.people.make()
    stays = h.people.make(exclusions=[gone.id], preferences=[gone.id])
    await h.service.register(exchange_id, [gone, stays], ORGANIZER, batch=True)
    await h.service.remove_participant(exchange_id, gone.id, as_participant(gone.id))
    left = await h.service.participant(exchange_id, stays.id, as_participant(stays.id))
    assert (left.exclusions, left.preferences) == (frozenset(), ())
    assert (await h.service.get(exchange_id, ORGANIZER)).participants == 1
    with pytest.raises(ParticipantNotFound):
        await h.service.remove_participant(exchange_id, gone.id, ORGANIZER)


async def test_only_the_participant_reads_their_registration(h: Harness) -> None:
    """The organizer does not read a participant's record."""
    exchange_id = await new_exchange(h.service)
    [pid] = await register_people(h, exchange_id, 1)
    with pytest.raises(Forbidden):
        await h.service.participant(exchange_id, pid, ORGANIZER)


async def test_match_commits_sealed_matches_every_giver_can_open(h: Harness) -> None:
    """After a match each participant opens their own box; the boxes form a permutation."""
    exchange_id = await new_exchange(h.service)
    ids = await register_people(h, exchange_id, 5)
    record = await h.service.match(exchange_id, ORGANIZER)
    assert (record.phase, record.matches, record.participants) == (Phase.COMMITTED, 5, 5)
    receivers = []
    commitments = {}
    for pid in ids:
        _, sealed = await h.service.sealed_match(exchange_id, pid, as_participant(pid))
        revealed = open_match(sealed.sealed, h.people.keys[pid])
        assert (revealed.exchange_id, revealed.giver) == (exchange_id, pid)
        assert verify_commitment(revealed, sealed.commitment)
        receivers.append(revealed.receiver)
        commitments[pid] = sealed.commitment
    assert sorted(receivers) == sorted(ids)
    assert all(g != r for g, r in zip(ids, receivers, strict=True))
    assert record.commitment_root == commitment_root(commitments)


async def test_commit_publishes_exchange_committed_without_pairs(h: Harness) -> None:
    """``exchange.committed`` carries the exchange id, year and count only."""
    subscription = h.bus.subscribe(keys.EXCHANGE_COMMITTED)
    exchange_id = await new_exchange(h.service)
    await register_people(h, exchange_id, 4)
    await h.service.match(exchange_id, ORGANIZER)
    subject, event = await subscription.get(timeout=1)
    assert subject == "exchange.committed"
    assert event == ExchangeCommitted(exchange_id=exchange_id, year=2026, count=4)


async def test_a_committed_exchange_refuses_changes_with_409(h: Harness) -> None:
    """After COMMITTED: no second match, no registration, no cancel (WrongPhase, 409)."""
    exchange_id = await new_exchange(h.service)
    [pid, *_] = await register_people(h, exchange_id, 3)
    await h.service.match(exchange_id, ORGANIZER)
    attempts = [
        h.service.match(exchange_id, ORGANIZER),
        h.service.register(exchange_id, [h.people.make()], ORGANIZER),
        h.service.update_participant(exchange_id, pid, {"budget": 5.0}, ORGANIZER),
        h.service.remove_participant(exchange_id, pid, ORGANIZER),
        h.service.cancel(exchange_id, ORGANIZER),
    ]
    for attempt in attempts:
        with pytest.raises(WrongPhase) as caught:
            await attempt
        assert caught.value.status_code == 409
        assert caught.value.details == {"phase": "COMMITTED"}


async def test_infeasible_goes_back_to_registration_with_the_explanation(tmp_path: Path) -> None:
    """Infeasible: the explanation is raised (422 details) and the phase is REGISTRATION again."""
    async with running_service(tmp_path, matcher=infeasible_matcher) as h:
        exchange_id = await new_exchange(h.service)
        ids = await register_people(h, exchange_id, 3)
        with pytest.raises(Infeasible) as caught:
            await h.service.match(exchange_id, ORGANIZER)
        assert caught.value.status_code == 422
        assert caught.value.details is not None
        assert caught.value.details["givers"] == [min(ids)]
        record = await h.service.get(exchange_id, ORGANIZER)
        assert (record.phase, record.matches, record.matching_since_ms) == (
            Phase.REGISTRATION,
            0,
            None,
        )
        await register_people(h, exchange_id, 1)  # registration is open again
        rows = await h.service.store.range(keys.matches_prefix(2026, exchange_id))
        assert rows.kvs == []


async def test_a_failing_solve_goes_back_to_registration(tmp_path: Path) -> None:
    """A matcher that crashes leaves the exchange in REGISTRATION and the error propagates."""

    def broken(participants, rules):  # type: ignore[no-untyped-def]
        raise RuntimeError("solver bug")

    async with running_service(tmp_path, matcher=broken) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 2)
        with pytest.raises(RuntimeError):
            await h.service.match(exchange_id, ORGANIZER)
        assert (await h.service.get(exchange_id, ORGANIZER)).phase is Phase.REGISTRATION


async def test_a_matcher_that_skips_someone_is_not_committed(tmp_path: Path) -> None:
    """A matching that is not a permutation of the participants is refused, not stored."""

    def partial(participants, rules):  # type: ignore[no-untyped-def]
        matching = shift_matcher(participants, rules)
        pairs = dict(matching.pairs)
        pairs.popitem()
        return replace(matching, pairs=pairs)

    async with running_service(tmp_path, matcher=partial) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 3)
        with pytest.raises(NorthpoleError) as caught:
            await h.service.match(exchange_id, ORGANIZER)
        assert caught.value.status_code == 500
        assert (await h.service.get(exchange_id, ORGANIZER)).phase is Phase.REGISTRATION


async def test_a_second_match_while_solving_gets_409_and_reads_still_answer(
    tmp_path: Path,
) -> None:
    """The solve runs off the event loop: reads answer, a second match is WrongPhase MATCHING."""
    gate = GatedMatcher()
    async with running_service(tmp_path, matcher=gate) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 3)
        first = asyncio.create_task(h.service.match(exchange_id, ORGANIZER))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        record = await asyncio.wait_for(h.service.get(exchange_id, ORGANIZER), 2)
        assert record.phase is Phase.MATCHING
        with pytest.raises(WrongPhase) as caught:
            await h.service.match(exchange_id, ORGANIZER)
        assert caught.value.details == {"phase": "MATCHING"}
        with pytest.raises(WrongPhase):
            await h.service.register(exchange_id, [h.people.make()], ORGANIZER)
        gate.release.set()
        assert (await first).phase is Phase.COMMITTED
        assert gate.calls == 1


async def test_cancel_during_a_solve_wins_and_nothing_is_committed(tmp_path: Path) -> None:
    """Cancelling while MATCHING makes the commit fail (Conflict) and stores no match."""
    gate = GatedMatcher()
    async with running_service(tmp_path, matcher=gate) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 3)
        solving = asyncio.create_task(h.service.match(exchange_id, ORGANIZER))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        assert (await h.service.cancel(exchange_id, ORGANIZER)).phase is Phase.CANCELLED
        gate.release.set()
        with pytest.raises(Conflict):
            await solving
        record = await h.service.get(exchange_id, ORGANIZER)
        assert (record.phase, record.matches) == (Phase.CANCELLED, 0)
        assert (await h.service.store.range(keys.matches_prefix(2026, exchange_id))).kvs == []


async def test_an_abandoned_matching_phase_can_be_taken_over_when_stale(tmp_path: Path) -> None:
    """MATCHING left behind by a dead process blocks a match until it is stale, then not."""
    settings = ExchangeSettings(stale_matching_s=60)
    async with running_service(tmp_path, settings=settings) as h:
        exchange_id = await new_exchange(h.service)
        await register_people(h, exchange_id, 3)
        state = keys.state_key(2026, exchange_id)
        kv = await h.service.store.get(state)
        assert kv is not None
        record = keys.decode_state(state, kv.value)
        now = h.clock.now_ms()
        abandoned = record.with_phase(Phase.MATCHING, now_ms=now, matching_since_ms=now)
        await h.service.store.txn([], [Put(state, keys.encode_state(abandoned))])
        with pytest.raises(WrongPhase):
            await h.service.match(exchange_id, ORGANIZER)
        h.clock.advance(61_000)
        assert (await h.service.match(exchange_id, ORGANIZER)).phase is Phase.COMMITTED


async def test_sealed_matches_are_for_their_participant_only(h: Harness) -> None:
    """Before commit: 409. After: the organizer, an admin and other participants are Forbidden."""
    exchange_id = await new_exchange(h.service)
    a, b, _ = await register_people(h, exchange_id, 3)
    with pytest.raises(WrongPhase):
        await h.service.sealed_match(exchange_id, a, as_participant(a))
    await h.service.match(exchange_id, ORGANIZER)
    for principal in (ORGANIZER, ADMIN, as_participant(b)):
        with pytest.raises(Forbidden):
            await h.service.sealed_match(exchange_id, a, principal)
    with pytest.raises(ParticipantNotFound):
        await h.service.sealed_match(
            exchange_id, "not-registered", as_participant("not-registered")
        )


async def test_commitments_list_every_giver_and_hash_to_the_root(h: Harness) -> None:
    """The audit list has one commitment per giver and reproduces the committed root."""
    exchange_id = await new_exchange(h.service)
    ids = await register_people(h, exchange_id, 4)
    await h.service.match(exchange_id, ORGANIZER)
    record, by_giver = await h.service.commitments(exchange_id, as_participant(ids[0]))
    assert sorted(by_giver) == sorted(ids)
    assert commitment_root(by_giver) == record.commitment_root


async def test_a_committed_exchange_survives_a_restart(tmp_path: Path) -> None:
    """Stop the service and start another on the same file: phase and matches are there."""
    async with running_service(tmp_path) as h:
        exchange_id = await new_exchange(h.service)
        ids = await register_people(h, exchange_id, 3)
        await h.service.match(exchange_id, ORGANIZER)
        people = h.people
    async with running_service(tmp_path, people=people) as again:
        record = await again.service.get(exchange_id, ORGANIZER)
        assert (record.phase, record.matches) == (Phase.COMMITTED, 3)
        _, sealed = await again.service.sealed_match(exchange_id, ids[0], as_participant(ids[0]))
        assert open_match(sealed.sealed, people.keys[ids[0]]).giver == ids[0]


async def test_the_phase_gauge_counts_exchanges(h: Harness) -> None:
    """``exchange_exchanges{phase}`` follows creates, commits and cancels."""
    first = await new_exchange(h.service)
    await new_exchange(h.service)
    await register_people(h, first, 2)
    await h.service.match(first, ORGANIZER)
    third = await new_exchange(h.service)
    await h.service.cancel(third, ORGANIZER)

    def gauge(phase: str) -> float | None:
        return h.registry.get_sample_value("exchange_exchanges", {"phase": phase})

    assert (gauge("REGISTRATION"), gauge("COMMITTED"), gauge("CANCELLED")) == (1, 1, 1)
    assert gauge("MATCHING") == 0


async def test_each_solve_is_timed_by_region(h: Harness) -> None:
    """``matching_duration_seconds{region}`` counts one observation per solve."""
    exchange_id = await new_exchange(h.service)
    await register_people(h, exchange_id, 2)
    await h.service.match(exchange_id, ORGANIZER)
    count = h.registry.get_sample_value("matching_duration_seconds_count", {"region": "north"})
    assert count == 1
    solves = h.registry.get_sample_value(
        "exchange_solves_total", {"region": "north", "outcome": "committed"}
    )
    assert solves == 1


async def test_many_concurrent_self_registrations_all_land(h: Harness) -> None:
    """200 participants registering at once all succeed, and the count is exact."""
    exchange_id = await new_exchange(h.service)
    people = [h.people.make() for _ in range(200)]
    await asyncio.gather(
        *(h.service.register(exchange_id, [p], as_participant(p.id)) for p in people)
    )
    assert (await h.service.get(exchange_id, ORGANIZER)).participants == 200
    rows = await h.service.store.range(keys.participants_prefix(2026, exchange_id))
    assert len(rows.kvs) == 200


async def test_two_processes_registering_at_once_keep_an_exact_count(tmp_path: Path) -> None:
    """Two services on one file (two processes) register concurrently; none is lost."""
    async with running_service(tmp_path) as first, running_service(tmp_path) as second:
        exchange_id = await new_exchange(first.service)
        people = [first.people.make() for _ in range(60)]
        await asyncio.gather(
            *(
                (first if i % 2 else second).service.register(exchange_id, [p], ORGANIZER)
                for i, p in enumerate(people)
            )
        )
        assert (await second.service.get(exchange_id, ORGANIZER)).participants == 60
