"""The exchange service's pure rules: who may act, phase checks, field and reference checks."""

from __future__ import annotations

import pytest

from northpole.core.auth import Principal, Role
from northpole.core.errors import Forbidden, InvalidInput, NorthpoleError
from northpole.exchange import policy
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.model import Exchange, Matching, Participant, Phase
from northpole.exchange.policy import WrongPhase

KEY = "A" * 43 + "="  # base64 of 32 zero bytes
RECORD = ExchangeRecord(
    exchange=Exchange(id="1", name="x", year=2026, region="n", organizer="alice")
)


def who(sub: str, role: Role) -> Principal:
    """A principal."""
    return Principal(sub=sub, role=role)


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        (who("alice", Role.OPERATOR), True),
        (who("bob", Role.OPERATOR), False),
        (who("anyone", Role.ADMIN), True),
        (who("alice", Role.PARTICIPANT), False),
        (who("alice", Role.WORKER), False),
    ],
)
def test_only_the_creating_operator_or_an_admin_organizes(
    principal: Principal, expected: bool
) -> None:
    """Organizing needs the operator named as organizer, or admin; the sub alone is not enough."""
    assert policy.organizes(principal, RECORD.exchange) is expected


def test_participants_act_only_for_themselves() -> None:
    """authorize_for admits the organizer and the participant, nobody else."""
    policy.authorize_for(RECORD, who("alice", Role.OPERATOR), "p1")
    policy.authorize_for(RECORD, who("p1", Role.PARTICIPANT), "p1")
    with pytest.raises(Forbidden):
        policy.authorize_for(RECORD, who("p2", Role.PARTICIPANT), "p1")


def test_a_participant_registers_only_themselves_and_alone() -> None:
    """A participant token may register one participant: itself."""
    me = Participant(id="p1", region="n", budget=1, public_key=KEY)
    other = Participant(id="p2", region="n", budget=1, public_key=KEY)
    policy.authorize_register(RECORD, who("p1", Role.PARTICIPANT), [me])
    for batch in ([other], [me, other]):
        with pytest.raises(Forbidden):
            policy.authorize_register(RECORD, who("p1", Role.PARTICIPANT), batch)


def test_reading_needs_registration_for_participants() -> None:
    """A participant token reads the exchange only when registered in it."""
    policy.authorize_read(RECORD, who("p1", Role.PARTICIPANT), registered=True)
    with pytest.raises(Forbidden):
        policy.authorize_read(RECORD, who("p1", Role.PARTICIPANT), registered=False)
    with pytest.raises(Forbidden):
        policy.authorize_read(RECORD, who("w", Role.WORKER), registered=True)


def test_own_data_is_for_the_participant_even_against_admins() -> None:
    """authorize_own refuses admins and organizers."""
    policy.authorize_own(who("p1", Role.PARTICIPANT), "p1", "match")
    for principal in (who("p1", Role.ADMIN), who("alice", Role.OPERATOR)):
        with pytest.raises(Forbidden):
            policy.authorize_own(principal, "p1", "match")


def test_wrong_phase_names_the_current_phase() -> None:
    """require raises WrongPhase with the phase in details and the allowed ones in the message."""
    with pytest.raises(WrongPhase) as caught:
        policy.require(RECORD, "match", Phase.MATCHING, Phase.COMMITTED)
    assert caught.value.details == {"phase": "REGISTRATION"}
    assert "MATCHING or COMMITTED" in caught.value.message


@pytest.mark.parametrize(
    ("participant", "field"),
    [
        (
            Participant(id="p", region="n", budget=1, preferences=("q", "q"), public_key=KEY),
            "x.preferences",
        ),
        (
            Participant(id="p", region="n", budget=1, preferences=("p",), public_key=KEY),
            "x.preferences",
        ),
        (
            Participant(
                id="p", region="n", budget=1, exclusions=frozenset({"a b"}), public_key=KEY
            ),
            "x.exclusions",
        ),
        (Participant(id="p", region="n", budget=float("inf"), public_key=KEY), "x.budget"),
        (Participant(id="p", region="", budget=1, public_key=KEY), "x.region"),
    ],
)
def test_participant_checks_name_the_field(participant: Participant, field: str) -> None:
    """Each bad participant field is named through the given namer."""
    with pytest.raises(InvalidInput) as caught:
        policy.check_participant(participant, field=lambda name: f"x.{name}")
    assert caught.value.field == field


def test_unknown_references_are_refused_known_ones_pass() -> None:
    """check_references names the first unknown id; a self-exclusion is ignored."""
    p = Participant(id="p", region="n", budget=1, exclusions=frozenset({"p", "q"}), public_key=KEY)
    policy.check_references(p, lambda other: other == "q", field=str)
    with pytest.raises(InvalidInput) as caught:
        policy.check_references(p, lambda other: False, field=str)
    assert caught.value.field == "exclusions"


def test_without_drops_a_person_from_exclusions_and_preferences() -> None:
    """without removes one id and keeps everything else."""
    p = Participant(
        id="p",
        region="n",
        budget=3,
        exclusions=frozenset({"a", "b"}),
        preferences=("b", "c"),
        group="g",
        public_key=KEY,
    )
    stripped = policy.without(p, "b")
    assert (stripped.exclusions, stripped.preferences) == (frozenset({"a"}), ("c",))
    assert (stripped.group, stripped.budget, stripped.public_key) == ("g", 3, KEY)


def test_a_matching_must_be_a_permutation() -> None:
    """check_pairs refuses a matching that gives twice to someone (a 500: a matcher bug)."""
    people = [Participant(id=i, region="n", budget=1, public_key=KEY) for i in "abc"]
    policy.check_pairs(Matching(pairs={"a": "b", "b": "c", "c": "a"}, cost=0), people)
    with pytest.raises(NorthpoleError) as caught:
        policy.check_pairs(Matching(pairs={"a": "b", "b": "a", "c": "a"}, cost=0), people)
    assert caught.value.status_code == 500
