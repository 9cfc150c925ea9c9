"""Unit tests for northpole.exchange.explain: true, minimal Hall witnesses and rule reasons."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from exchange_oracle import allowed, instances
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.exchange.explain import explain
from northpole.exchange.matching import match
from northpole.exchange.model import (
    Explanation,
    ExplanationKind,
    Infeasible,
    Participant,
    Rules,
)


def neighbours(ps: Sequence[Participant], rules: Rules, ids: Sequence[str], side: str) -> set[str]:
    """Who the givers ``ids`` may give to (side "out"), or who may give to the receivers ``ids``."""
    by_id = {p.id: p for p in ps}
    if side == "out":
        return {r.id for g in ids for r in ps if allowed(rules, by_id[g], r)}
    return {g.id for r in ids for g in ps if allowed(rules, g, by_id[r])}


def check_hall(ps: Sequence[Participant], rules: Rules, exp: Explanation) -> None:
    """Assert ``exp`` is a true Hall violation and that no proper subset of it is one."""
    assert exp.kind is ExplanationKind.HALL
    if len(exp.givers) > len(exp.receivers):
        big, small, side = exp.givers, exp.receivers, "out"
    else:
        big, small, side = exp.receivers, exp.givers, "in"
    assert len(small) < len(big)
    assert neighbours(ps, rules, big, side) == set(small)
    for size in range(1, len(big)):
        for sub in itertools.combinations(big, size):
            assert len(neighbours(ps, rules, sub, side)) >= size, sub


@settings(max_examples=300, deadline=None)
@given(case=instances(max_n=8), both_sides=st.booleans())
def test_hall_explanations_are_true_and_minimal(
    case: tuple[list[Participant], Rules], both_sides: bool
) -> None:
    """A HALL explanation names k people whose options are exactly the j < k named, minimally.

    ``both_sides`` makes the search also try the receiver side for every witness.
    """
    import northpole.exchange.explain as explain_module

    ps, rules = case
    with pytest.MonkeyPatch.context() as patch:
        if both_sides:
            patch.setattr(explain_module, "_GOOD_ENOUGH", 0)
        exp = explain(ps, rules)
    if exp is not None and exp.kind is ExplanationKind.HALL:
        check_hall(ps, rules, exp)


def test_match_raises_infeasible_with_the_explanation_as_details() -> None:
    """match raises Infeasible whose details are the explanation's to_details()."""
    ps = [
        Participant(id="a", region="x", budget=10, exclusions=frozenset({"b", "c"})),
        Participant(id="b", region="x", budget=10),
        Participant(id="c", region="x", budget=10),
    ]
    with pytest.raises(Infeasible) as caught:
        match(ps, Rules(), rng=random.Random(0))
    exp = caught.value.explanation
    assert exp == explain(ps, Rules())
    assert caught.value.details == exp.to_details()
    assert caught.value.status_code == 422
    assert exp.givers == ("a",) and exp.receivers == ()
    assert "a" in exp.message


def test_nobody_may_give_to_someone_everybody_excludes() -> None:
    """When everybody excludes x, the witness is the receiver x with no givers."""
    ps = [
        Participant(id=f"p{i}", region="x", budget=10, exclusions=frozenset({"x"}))
        for i in range(4)
    ]
    ps.append(Participant(id="x", region="x", budget=10))
    exp = explain(ps, Rules())
    assert exp is not None
    assert exp.receivers == ("x",) and exp.givers == ()
    assert "nobody" in exp.message


def planted(n: int) -> tuple[list[Participant], Rules]:
    """n people with close budgets, plus a household of 5 whose budget only 2 others share."""
    rng = random.Random(n)
    ps = [Participant(id=f"p{i}", region="x", budget=10.0 + rng.random() * 5) for i in range(n)]
    ps += [Participant(id=f"h{i}", region="x", budget=100.0, group="home") for i in range(5)]
    ps += [Participant(id=f"o{i}", region="x", budget=101.0) for i in range(2)]
    return ps, Rules(budget_tolerance=2.0)


@pytest.mark.parametrize("n", [20, 400, 20_000])
def test_a_planted_household_is_found_in_a_large_exchange(n: int) -> None:
    """The household that can only give to two outsiders is named, minimally, at any size."""
    ps, rules = planted(n)
    exp = explain(ps, rules)
    assert exp is not None
    assert set(exp.receivers) == {"o0", "o1"}
    assert len(exp.givers) == 3 and all(g.startswith("h") for g in exp.givers)
    if n <= 400:
        check_hall(ps, rules, exp)


def islands(n: int) -> list[Participant]:
    """Two budget islands of n people each, with no budget-compatible pair between them."""
    return [Participant(id=f"a{i}", region="x", budget=10.0) for i in range(n)] + [
        Participant(id=f"b{i}", region="x", budget=90.0) for i in range(n)
    ]


@pytest.mark.parametrize("n", [3, 20])
def test_single_cycle_across_closed_groups_is_a_rule_problem(n: int) -> None:
    """Two groups that cannot give to each other admit no single circle: RULE naming one group."""
    rules = Rules(single_cycle=True, budget_tolerance=5.0)
    exp = explain(islands(n), rules)
    assert exp is not None and exp.kind is ExplanationKind.RULE
    assert exp.rule == "single_cycle"
    assert len({g[0] for g in exp.givers}) == 1
    assert explain(islands(n), Rules(budget_tolerance=5.0)) is None


def test_no_reciprocal_with_a_forced_pair_is_a_rule_problem() -> None:
    """Two people who may only give to each other break no_reciprocal: RULE naming them."""
    ps = [
        *islands(20)[:20],
        Participant(id="u", region="x", budget=500.0),
        Participant(id="v", region="x", budget=500.0),
    ]
    rules = Rules(no_reciprocal=True, budget_tolerance=5.0)
    exp = explain(ps, rules)
    assert exp is not None and exp.rule == "no_reciprocal"
    assert set(exp.givers) == {"u", "v"}
    with pytest.raises(Infeasible):
        match(ps, rules, rng=random.Random(1))


def test_feasible_exchange_has_no_explanation() -> None:
    """explain returns None for a feasible exchange of any size."""
    ps, rules = planted(300)
    assert explain(ps[:300], rules) is None


def test_large_reaches_use_the_graph_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the direct walk capped at one row, scipy's BFS finds the same minimal witness."""
    import northpole.exchange.explain as explain_module

    ps, rules = planted(400)
    direct = explain(ps, rules)
    monkeypatch.setattr(explain_module, "_SMALL_REACH", 1)
    searched = explain(ps, rules)
    assert searched is not None and direct is not None
    check_hall(ps, rules, searched)
    assert set(searched.receivers) == set(direct.receivers)


def test_witnesses_on_sampled_candidates_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """On sampled candidates a witness is reported only if every allowed gift confirms it."""
    import northpole.exchange.candidates as candidates_module

    monkeypatch.setattr(candidates_module, "DENSE_MAX", 0)
    monkeypatch.setattr(candidates_module, "EDGE_LIMIT", 0)
    ps, rules = planted(60)
    exp = explain(ps, rules)
    assert exp is not None and set(exp.receivers) == {"o0", "o1"}
    check_hall(ps, rules, exp)
    # One random candidate each: the sample has no perfect matching, the exchange does.
    monkeypatch.setattr(candidates_module, "SAMPLE_K", 1)
    crowd = [Participant(id=f"p{i}", region="x", budget=20.0) for i in range(60)]
    assert explain(crowd, Rules()) is None
    with pytest.raises(Infeasible) as caught:
        match(crowd, Rules(), rng=random.Random(0))
    assert "cannot prove" in caught.value.explanation.message
