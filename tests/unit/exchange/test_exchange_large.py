"""Unit tests for the large-shard path: graph shapes, solvers, tie-breakers and cycle repair."""

from __future__ import annotations

import random

import numpy as np
import pytest
from exchange_oracle import is_valid
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.exchange.candidates import build_graph, localize
from northpole.exchange.cycles import break_two_cycles, cycle_labels, join_cycles
from northpole.exchange.matching import cost_of, match, validate
from northpole.exchange.model import Participant, RegionPreference, Rules
from northpole.exchange.roster import build_roster, shards_of
from northpole.exchange.solvers import solve_dense, solve_sparse, tie_range


def crowd(n: int, seed: int, wishes: int = 3, regions: int = 1) -> list[Participant]:
    """n people with spread budgets, a few households, exclusions and wishes."""
    rng = random.Random(seed)
    ids = [f"p{i}" for i in range(n)]
    out = []
    for i, pid in enumerate(ids):
        others = [x for x in ids if x != pid]
        out.append(
            Participant(
                id=pid,
                region=f"r{i % regions}",
                budget=float(rng.randint(10, 60)),
                exclusions=frozenset(rng.sample(others, 2)),
                preferences=tuple(rng.sample(others, rng.randint(0, wishes))),
                group=f"g{i // 3}" if i % 7 == 0 else None,
            )
        )
    return out


def graph_of(ps: list[Participant], rules: Rules, shape: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """The graph of the first shard, in a forced shape."""
    roster = build_roster(ps, rules)
    shard = shards_of(roster, rules)[0]
    local = localize(roster, shard, random.Random(seed))
    return build_graph(local, rules, roster.max_wishes, seed=seed, force=shape)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(13, 70), seed=st.integers(0, 10**6), tol=st.sampled_from([None, 10.0, 25.0]))
def test_dense_and_sparse_solvers_agree_on_the_optimum(
    n: int, seed: int, tol: float | None
) -> None:
    """The same shard solved on the dense matrix and on the CSR graph costs the same."""
    ps = crowd(n, seed)
    rules = Rules(budget_tolerance=tol, region_preference=RegionPreference.SAME)
    dense = graph_of(ps, rules, "dense", seed)
    sparse = graph_of(ps, rules, "sparse", seed)
    assert dense.edge_count() == sparse.edge_count()
    a = solve_dense(dense, random.Random(seed), perturb=True)
    b = solve_dense(dense, random.Random(seed), perturb=False)
    c = solve_sparse(sparse, random.Random(seed), perturb=True)
    d = solve_sparse(sparse, random.Random(seed))
    costs = {x.cost if x is not None else None for x in (a, b, c, d)}
    assert len(costs) == 1


def test_block_solving_is_valid_and_not_claimed_exact() -> None:
    """Solving label blocks apart gives a permutation of allowed gifts flagged as not exact."""
    ps = crowd(600, 4)
    rules = Rules(budget_tolerance=3.0)
    graph = graph_of(ps, rules, "sparse", 4)
    whole = solve_sparse(graph, random.Random(1))
    blocks = solve_sparse(graph, random.Random(1), block=100)
    assert whole is not None and blocks is not None
    assert whole.exact and not blocks.exact
    assert sorted(blocks.succ.tolist()) == list(range(600))
    ok, _ = graph.lookup(np.arange(600, dtype=np.int64), blocks.succ)
    assert ok.all()
    assert blocks.cost >= whole.cost


def test_sampled_graph_without_wishes_is_proven_optimal() -> None:
    """On sampled candidates with equal costs, the result reaches the lower bound n*W."""
    ps = [Participant(id=f"p{i}", region="x", budget=20.0) for i in range(300)]
    graph = graph_of(ps, Rules(), "sampled", 3)
    assert not graph.complete
    result = solve_sparse(graph, random.Random(3))
    assert result is not None
    assert result.cost == int(graph.row_floor.sum()) == 300


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 100_000, 10**6])
def test_tie_breakers_keep_every_sum_exact(n: int) -> None:
    """Scaled costs plus tie-breakers, summed over n gifts, stay below 2**52."""
    max_cost = 20
    r = tie_range(n, max_cost)
    assert r >= 1
    assert n * ((max_cost + 1) * n * r + r) < 2**52 or r == 1


@pytest.mark.parametrize(
    "rules",
    [
        Rules(no_reciprocal=True),
        Rules(single_cycle=True),
        Rules(single_cycle=True, no_reciprocal=True),
        Rules(no_reciprocal=True, budget_tolerance=20.0),
        Rules(single_cycle=True, allow_cross_region=True, region_preference=RegionPreference.OTHER),
    ],
)
@pytest.mark.parametrize("n", [13, 40, 250])
def test_cycle_rules_hold_above_the_exact_size(rules: Rules, n: int) -> None:
    """Large shards with no_reciprocal/single_cycle get valid matchings; optimal is truthful."""
    ps = crowd(n, n, regions=1 if n < 30 else 2)
    m = match(ps, rules, rng=random.Random(n))
    assert validate(ps, rules, m.pairs) == []
    assert is_valid(ps, rules, dict(m.pairs))
    assert cost_of(ps, rules, m.pairs) == m.cost
    plain = Rules(
        budget_tolerance=rules.budget_tolerance,
        allow_cross_region=rules.allow_cross_region,
        region_preference=rules.region_preference,
    )
    relaxed = match(ps, plain, rng=random.Random(n))
    assert relaxed.optimal
    assert m.cost >= relaxed.cost
    if m.optimal:
        assert m.cost == relaxed.cost


def test_break_two_cycles_removes_every_pair() -> None:
    """On a complete graph, a permutation made of swaps is repaired into one without 2-cycles."""
    ps = [Participant(id=f"p{i}", region="x", budget=20.0) for i in range(20)]
    graph = graph_of(ps, Rules(), "dense")
    succ = np.arange(20, dtype=np.int64) ^ 1  # (0 1)(2 3)...
    assert break_two_cycles(graph, succ, np.random.default_rng(0))
    assert not (succ[succ] == np.arange(20)).any()
    assert sorted(succ.tolist()) == list(range(20))


def test_join_cycles_leaves_one_cycle() -> None:
    """On a sparse banded graph, many small cycles are merged into one."""
    ps = [Participant(id=f"p{i}", region="x", budget=10.0 + i) for i in range(200)]
    graph = graph_of(ps, Rules(budget_tolerance=3.0), "sparse")
    succ = np.arange(200, dtype=np.int64) ^ 1
    assert join_cycles(graph, succ, np.random.default_rng(0))
    _, cycles = cycle_labels(succ)
    assert len(cycles) == 1
    ok, _ = graph.lookup(np.arange(200, dtype=np.int64), succ)
    assert ok.all()


def test_large_sparse_exchange_is_matched_validly() -> None:
    """A 20,000-person exchange with a budget tolerance goes through the sparse solver."""
    ps = [Participant(id=f"p{i}", region="x", budget=10.0 + i * 0.5) for i in range(20_000)]
    rules = Rules(budget_tolerance=6.0)
    m = match(ps, rules, rng=random.Random(9))
    assert len(m.pairs) == 20_000
    budget = {p.id: p.budget for p in ps}
    assert all(abs(budget[g] - budget[r]) <= 6.0 and g != r for g, r in m.pairs.items())
    assert len(set(m.pairs.values())) == 20_000
    assert m.optimal and m.cost == 20_000


@pytest.mark.parametrize("high", [10, 1_000, 400_000, 10**7, 10**12])
def test_dense_assign_is_optimal_for_any_value_range(high: int) -> None:
    """assign() matches scipy's optimum whether LAPJV (small values) or scipy (large) runs."""
    from scipy.optimize import linear_sum_assignment

    from northpole.exchange.solvers import assign

    gen = np.random.default_rng(high)
    for _ in range(30):
        n = int(gen.integers(2, 30))
        weights = gen.integers(0, high, size=(n, n)).astype(np.float64)
        forbidden = gen.random((n, n)) < 0.3
        expected = weights.copy()
        expected[forbidden] = np.inf
        try:
            r, c = linear_sum_assignment(expected)
            best: float | None = float(expected[r, c].sum())
        except ValueError:
            best = None
        succ = assign(weights.copy(), forbidden)
        if best is None:
            assert succ is None
        else:
            assert succ is not None
            assert not forbidden[np.arange(n), succ].any()
            assert float(expected[np.arange(n), succ].sum()) == best
