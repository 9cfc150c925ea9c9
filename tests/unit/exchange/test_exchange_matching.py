"""Unit tests for northpole.exchange.matching: validity, optimality, regions, bad input."""

from __future__ import annotations

import random

import pytest
from exchange_oracle import brute, instances, is_valid
from hypothesis import given, settings

from northpole.core.errors import InvalidInput
from northpole.exchange.explain import explain
from northpole.exchange.matching import cost_of, match, validate
from northpole.exchange.model import (
    ExplanationKind,
    Infeasible,
    Participant,
    RegionPreference,
    Rules,
)


def people(n: int, region: str = "north") -> list[Participant]:
    """``n`` plain participants p0..p(n-1) in one region with budget 20."""
    return [Participant(id=f"p{i}", region=region, budget=20.0) for i in range(n)]


@settings(max_examples=250, deadline=None)
@given(case=instances(max_n=8), seed=...)
def test_match_is_valid_and_optimal_against_brute_force(
    case: tuple[list[Participant], Rules], seed: int
) -> None:
    """Every returned matching satisfies all hard constraints and has the brute-force least cost."""
    ps, rules = case
    truth = brute(ps, rules)
    try:
        m = match(ps, rules, rng=random.Random(seed))
    except Infeasible:
        assert truth.best is None
        return
    assert is_valid(ps, rules, dict(m.pairs))
    assert validate(ps, rules, m.pairs) == []
    assert m.optimal
    assert m.cost == truth.best
    assert cost_of(ps, rules, m.pairs) == m.cost


@settings(max_examples=250, deadline=None)
@given(case=instances(max_n=7))
def test_explain_is_none_exactly_when_a_valid_matching_exists(
    case: tuple[list[Participant], Rules],
) -> None:
    """explain() returns None iff brute force finds a valid matching."""
    ps, rules = case
    truth = brute(ps, rules)
    assert (explain(ps, rules) is None) == (truth.best is not None)


def test_no_wishes_every_matching_costs_one_per_gift() -> None:
    """Without wishes W = 1, so any valid matching of n people costs n."""
    m = match(people(6), Rules(), rng=random.Random(1))
    assert m.cost == 6.0
    assert m.optimal


def test_first_wishes_are_granted_when_possible() -> None:
    """A cycle of first wishes (rank 1, cost 0 each) is the unique optimum."""
    ps = [
        Participant(id="a", region="x", budget=10, preferences=("b", "c")),
        Participant(id="b", region="x", budget=10, preferences=("c",)),
        Participant(id="c", region="x", budget=10, preferences=("a", "b")),
        Participant(id="d", region="x", budget=10, preferences=("e",)),
        Participant(id="e", region="x", budget=10, preferences=("d",)),
    ]
    for seed in range(5):
        m = match(ps, Rules(), rng=random.Random(seed))
        assert dict(m.pairs) == {"a": "b", "b": "c", "c": "a", "d": "e", "e": "d"}
        assert m.cost == 0.0


def test_cost_of_follows_the_documented_formula() -> None:
    """Rank r costs r-1, an unwished receiver M+1, and a gift against the region preference +1."""
    ps = [
        Participant(id="a", region="x", budget=10, preferences=("b", "c", "d")),
        Participant(id="b", region="y", budget=10),
        Participant(id="c", region="x", budget=10),
        Participant(id="d", region="y", budget=10),
    ]
    rules = Rules(allow_cross_region=True, region_preference=RegionPreference.SAME)
    # M = 3, W = 4. a->c: rank 2 (1), same region. b->d: W, same. c->a: W, same. d->b: W.
    assert cost_of(ps, rules, {"a": "c", "b": "d", "c": "a", "d": "b"}) == 1 + 4 + 4 + 4
    # a->b: rank 1 (0) + 1 (other region); b->a: W + 1; c->d: W + 1; d->c: W + 1.
    assert cost_of(ps, rules, {"a": "b", "b": "a", "c": "d", "d": "c"}) == 1 + 5 + 5 + 5


def test_regions_are_matched_apart_by_default() -> None:
    """With Rules() nobody gives outside their region, and each region is solved."""
    ps = people(4, "north") + [
        Participant(id=f"s{i}", region="south", budget=20.0) for i in range(5)
    ]
    m = match(ps, Rules(), rng=random.Random(2))
    region = {p.id: p.region for p in ps}
    assert all(region[g] == region[r] for g, r in m.pairs.items())
    assert len(m.pairs) == 9


def test_single_cycle_is_per_region_when_regional() -> None:
    """single_cycle with regions apart gives one circle per region."""
    ps = people(5, "north") + [
        Participant(id=f"s{i}", region="south", budget=20.0) for i in range(4)
    ]
    rules = Rules(single_cycle=True)
    m = match(ps, rules, rng=random.Random(3))
    assert validate(ps, rules, m.pairs) == []
    assert is_valid(ps, rules, dict(m.pairs))


def test_a_region_of_one_is_explained_as_too_few() -> None:
    """A lone participant in a region makes the regional exchange infeasible, naming them."""
    ps = [*people(3, "north"), Participant(id="lonely", region="south", budget=20.0)]
    with pytest.raises(Infeasible) as caught:
        match(ps, Rules(), rng=random.Random(0))
    exp = caught.value.explanation
    assert exp.kind is ExplanationKind.TOO_FEW
    assert exp.region == "south"
    assert "lonely" in exp.message
    assert caught.value.details is not None and caught.value.details["region"] == "south"


def test_allow_cross_region_solves_everybody_at_once() -> None:
    """With allow_cross_region a lone person in a region is matched with the others."""
    ps = [*people(3, "north"), Participant(id="lonely", region="south", budget=20.0)]
    m = match(ps, Rules(allow_cross_region=True), rng=random.Random(0))
    assert "lonely" in m.pairs and "lonely" in m.pairs.values()


def test_cross_region_only_with_one_region_is_a_rule_problem() -> None:
    """cross_region_only when everybody shares one region is explained as that rule."""
    with pytest.raises(Infeasible) as caught:
        match(people(4), Rules(cross_region_only=True), rng=random.Random(0))
    assert caught.value.explanation.kind is ExplanationKind.RULE
    assert caught.value.explanation.rule == "cross_region_only"


def test_cross_region_only_sends_every_gift_abroad() -> None:
    """cross_region_only: every gift goes to another region."""
    ps = people(3, "north") + [
        Participant(id=f"s{i}", region="south", budget=20.0) for i in range(3)
    ]
    m = match(ps, Rules(cross_region_only=True), rng=random.Random(5))
    region = {p.id: p.region for p in ps}
    assert all(region[g] != region[r] for g, r in m.pairs.items())


def test_no_reciprocal_with_two_people_is_a_rule_problem() -> None:
    """Two people can only swap gifts, which no_reciprocal forbids."""
    with pytest.raises(Infeasible) as caught:
        match(people(2), Rules(no_reciprocal=True), rng=random.Random(0))
    assert caught.value.explanation.rule == "no_reciprocal"
    assert set(caught.value.explanation.givers) == {"p0", "p1"}


def test_single_cycle_with_two_people_is_their_swap() -> None:
    """single_cycle alone with two people: the swap is one circle through both."""
    m = match(people(2), Rules(single_cycle=True), rng=random.Random(0))
    assert dict(m.pairs) == {"p0": "p1", "p1": "p0"}


def test_fewer_than_two_participants_is_too_few() -> None:
    """An empty or one-person exchange is explained as too few."""
    for ps in ([], people(1)):
        with pytest.raises(Infeasible) as caught:
            match(ps, Rules(allow_cross_region=True), rng=random.Random(0))
        assert caught.value.explanation.kind is ExplanationKind.TOO_FEW


def test_default_rng_is_system_randomness() -> None:
    """Without an rng the matcher still returns a valid matching (from SystemRandom)."""
    ps = people(7)
    m = match(ps, Rules(no_reciprocal=True))
    assert validate(ps, Rules(no_reciprocal=True), m.pairs) == []


def test_different_randomness_gives_different_matchings() -> None:
    """With many equally good matchings, different seeds do not all pick the same one."""
    ps = people(30)
    seen = {tuple(sorted(match(ps, Rules(), rng=random.Random(s)).pairs.items())) for s in range(6)}
    assert len(seen) > 1


@pytest.mark.parametrize(
    ("ps", "field"),
    [
        (people(2) + people(1), "participants"),
        ([Participant(id="a", region="x", budget=10, exclusions=frozenset({"zz"}))], "exclusions"),
        ([Participant(id="a", region="x", budget=10, preferences=("zz",))], "preferences"),
        (
            [
                Participant(id="a", region="x", budget=10, preferences=("b", "b")),
                Participant(id="b", region="x", budget=10),
            ],
            "preferences",
        ),
        ([Participant(id="a", region="x", budget=0)], "budget"),
        ([Participant(id="a", region="x", budget=-5)], "budget"),
        ([Participant(id="a", region="x", budget=float("nan"))], "budget"),
        ([Participant(id="", region="x", budget=10)], "id"),
        (["not a participant"], "participants"),
    ],
)
def test_bad_input_raises_invalid_input_naming_the_field(ps: list[Participant], field: str) -> None:
    """Malformed participants raise InvalidInput (not a crash) with the field named."""
    for call in (
        lambda: match(ps, Rules(), rng=random.Random(0)),
        lambda: explain(ps, Rules()),
        lambda: validate(ps, Rules(), {}),
        lambda: cost_of(ps, Rules(), {}),
    ):
        with pytest.raises(InvalidInput) as caught:
            call()
        assert not isinstance(caught.value, Infeasible)
        assert caught.value.field == field


@pytest.mark.parametrize("tol", [-1.0, float("nan"), float("inf")])
def test_bad_budget_tolerance_is_invalid(tol: float) -> None:
    """A negative or non-finite budget tolerance raises InvalidInput on budget_tolerance."""
    with pytest.raises(InvalidInput) as caught:
        match(people(3), Rules(budget_tolerance=tol), rng=random.Random(0))
    assert caught.value.field == "budget_tolerance"


def test_validate_lists_every_broken_constraint() -> None:
    """validate names self-gifts, exclusions, groups, budgets, regions and reciprocity."""
    ps = [
        Participant(id="a", region="x", budget=10, exclusions=frozenset({"b"}), group="h"),
        Participant(id="b", region="x", budget=50, group="h"),
        Participant(id="c", region="y", budget=10),
    ]
    rules = Rules(budget_tolerance=5, no_reciprocal=True)
    problems = validate(ps, rules, {"a": "b", "b": "a", "c": "c"})
    text = "\n".join(problems)
    assert "a excludes b" in text
    assert "group h" in text
    assert "differ by more than 5" in text
    assert "c gives to themselves" in text
    assert "give to each other" in text
    assert validate(ps, rules, {"a": "b"}) != []


def test_validate_rejects_unknown_ids_in_pairs() -> None:
    """A proposal naming someone who is not a participant raises InvalidInput on pairs."""
    with pytest.raises(InvalidInput) as caught:
        validate(people(3), Rules(), {"p0": "ghost"})
    assert caught.value.field == "pairs"


def test_validate_counts_circles_for_single_cycle() -> None:
    """Two circles break single_cycle; one circle does not."""
    ps = people(4)
    rules = Rules(single_cycle=True)
    assert validate(ps, rules, {"p0": "p1", "p1": "p0", "p2": "p3", "p3": "p2"}) != []
    assert validate(ps, rules, {"p0": "p1", "p1": "p2", "p2": "p3", "p3": "p0"}) == []
