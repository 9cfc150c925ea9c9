"""The exchange matcher: who gives to whom, optimally, at random among equals.

:func:`match` returns a valid matching of least total cost (the cost is in
:mod:`northpole.exchange.cost` and ``docs/matching.md``), or raises
:class:`~northpole.exchange.model.Infeasible` with an explanation.
:func:`validate` lists the hard constraints a proposed matching breaks (a
follower checks the leader's proposal with it) and :func:`cost_of` prices one.

How a shard (a region, or everybody when ``rules.regional`` is off) is solved:

* up to :data:`~northpole.exchange.exact.EXACT_MAX` people, exactly, with every
  rule, drawing uniformly among the optimal matchings (so among all valid ones
  when there are no soft preferences);
* above, the assignment relaxation (:mod:`northpole.exchange.solvers`) on the
  allowed-edge graph (:mod:`northpole.exchange.candidates`), ties broken by
  secret randomness; ``no_reciprocal`` and ``single_cycle`` are then enforced
  by local repair (:mod:`northpole.exchange.cycles`), and ``optimal`` says
  whether the result provably reaches the relaxation's lower bound.

All randomness comes from ``rng``; without one, from :class:`random.SystemRandom`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NoReturn

import numpy as np

from northpole.core.errors import InvalidInput
from northpole.exchange.candidates import Graph, build_graph, localize
from northpole.exchange.cost import gift_cost
from northpole.exchange.cycles import (
    break_two_cycles,
    cycle_labels,
    join_cycles,
    resolve_without_pairs,
)
from northpole.exchange.exact import EXACT_MAX, solve_exact
from northpole.exchange.explain import explain_shard, names
from northpole.exchange.model import (
    Explanation,
    ExplanationKind,
    Infeasible,
    Matching,
    Participant,
    Rules,
)
from northpole.exchange.roster import IntArray, Roster, Shard, build_roster, shards_of
from northpole.exchange.solvers import solve

__all__ = ["cost_of", "match", "validate"]

#: Rounds of "forbid the 2-cycles and solve again" on dense shards (no_reciprocal).
_RESOLVE_ROUNDS = 4


def match(
    participants: Sequence[Participant],
    rules: Rules,
    *,
    rng: random.Random | None = None,
) -> Matching:
    """Return a valid matching of least cost, chosen at random among equally good ones.

    Args:
        participants: Everybody in the exchange.
        rules: Its hard constraints and soft preferences.
        rng: The source of randomness; ``None`` uses ``random.SystemRandom()``.

    Raises:
        InvalidInput: Malformed input (``field`` names it).
        Infeasible: No valid matching; ``explanation`` says why.
    """
    rand = rng if rng is not None else random.SystemRandom()
    roster = build_roster(participants, rules)
    if roster.n < 2:
        _raise(roster, Shard(None, np.arange(roster.n, dtype=np.int64)), rules, None)
    pairs: dict[str, str] = {}
    total = 0
    optimal = True
    for shard in shards_of(roster, rules):
        succ, cost, proven = _solve_shard(roster, shard, rules, rand)
        for g, r in zip(succ[0].tolist(), succ[1].tolist(), strict=True):
            pairs[roster.people[g].id] = roster.people[r].id
        total += cost
        optimal = optimal and proven
    return Matching(pairs=pairs, cost=float(total), optimal=optimal)


def _solve_shard(
    roster: Roster, shard: Shard, rules: Rules, rng: random.Random
) -> tuple[tuple[IntArray, IntArray], int, bool]:
    """Solve one shard: ``((givers, receivers) as roster positions, cost, optimal)``."""
    if shard.members.size < 2:
        _raise(roster, shard, rules, None)
    graph = build_graph(
        localize(roster, shard, rng), rules, roster.max_wishes, seed=rng.getrandbits(64)
    )
    people = graph.local.people
    if graph.n <= EXACT_MAX:
        exact = solve_exact(
            graph.small_matrix(),
            no_reciprocal=rules.no_reciprocal,
            single_cycle=rules.single_cycle,
            rng=rng,
        )
        if exact is None:
            _raise(roster, shard, rules, graph)
        succ = np.asarray(exact.succ, dtype=np.int64)
        return (people, people[succ]), exact.cost, True
    assignment = solve(graph, rng)
    if assignment is None:
        _raise(roster, shard, rules, graph)
    succ = assignment.succ.copy()
    gen = np.random.default_rng(rng.getrandbits(128))
    repaired = True
    if rules.single_cycle:
        repaired = join_cycles(graph, succ, gen)
    elif rules.no_reciprocal and (succ[succ] == np.arange(graph.n)).any():
        succ, repaired = _without_pairs(graph, succ, rng, gen)
    if not repaired:
        _raise(roster, shard, rules, graph)
    ok, costs = graph.lookup(np.arange(graph.n, dtype=np.int64), succ)
    if not ok.all():
        raise RuntimeError("the cycle repair used a gift that is not allowed")
    cost = int(costs.sum())
    relaxed = graph.complete and assignment.exact
    proven = (relaxed and cost == assignment.cost) or cost == int(graph.row_floor.sum())
    return (people, people[succ]), cost, proven


def _without_pairs(
    graph: Graph, succ: IntArray, rng: random.Random, gen: np.random.Generator
) -> tuple[IntArray, bool]:
    """The cheaper of splicing the 2-cycles away and solving again without them."""
    options = []
    spliced = succ.copy()
    if break_two_cycles(graph, spliced, gen):
        options.append(spliced)

    def again(narrowed: Graph) -> IntArray | None:
        found = solve(narrowed, rng)
        return None if found is None else found.succ

    resolved = resolve_without_pairs(graph, succ, again, gen, _RESOLVE_ROUNDS)
    if resolved is not None:
        options.append(resolved)
    if not options:
        return succ, False
    everyone = np.arange(graph.n, dtype=np.int64)
    costs = [int(graph.lookup(everyone, s)[1].sum()) for s in options]
    return options[int(np.argmin(costs))], True


def _raise(roster: Roster, shard: Shard, rules: Rules, graph: Graph | None) -> NoReturn:
    """Raise :class:`Infeasible` with the shard's explanation.

    When nothing can be proven (a large shard whose cycle repair got stuck, or
    sampled candidates that could not be matched), the explanation says the
    search failed rather than that none exists.
    """
    found = explain_shard(roster, shard, rules, graph)
    if found is None:
        rule = (
            "single_cycle"
            if rules.single_cycle
            else "no_reciprocal"
            if rules.no_reciprocal
            else None
        )
        ids = tuple(roster.people[int(p)].id for p in shard.members)
        where = f" of region {shard.region}" if shard.region is not None else ""
        drop = f", or drop {rule}" if rule else ""
        found = Explanation(
            ExplanationKind.RULE,
            f"the search found no valid matching for the {shard.members.size} "
            f"people{where} ({names(roster, shard.members)}), though it cannot prove that "
            f"none exists; their allowed gifts are too few: relax exclusions, groups or "
            f"budgets{drop}",
            ids,
            ids,
            rule,
            shard.region,
        )
    raise Infeasible(found)


def _pairs_positions(roster: Roster, pairs: Mapping[str, str]) -> list[tuple[int, int]]:
    """Check ``pairs`` names everybody once as giver and once as receiver; return positions."""
    if not isinstance(pairs, Mapping):
        raise InvalidInput("pairs must map giver ids to receiver ids", field="pairs")
    out: list[tuple[int, int]] = []
    for g, r in pairs.items():
        if g not in roster.index or r not in roster.index:
            raise InvalidInput(f"pairs name an unknown participant: {g!r} -> {r!r}", field="pairs")
        out.append((roster.index[g], roster.index[r]))
    return out


def validate(
    participants: Sequence[Participant], rules: Rules, pairs: Mapping[str, str]
) -> list[str]:
    """Return the hard constraints ``pairs`` breaks, one message each; ``[]`` if it is valid.

    Raises:
        InvalidInput: The participants are malformed, or ``pairs`` names
            someone who is not a participant (``field="pairs"``).
    """
    roster = build_roster(participants, rules)
    gifts = _pairs_positions(roster, pairs)
    problems: list[str] = []
    givers = {g for g, _ in gifts}
    missing = [p.id for i, p in enumerate(roster.people) if i not in givers]
    if missing:
        problems.append(f"no gift from {', '.join(missing)}")
    received: dict[int, int] = {}
    for _, r in gifts:
        received[r] = received.get(r, 0) + 1
    for r, times in received.items():
        if times > 1:
            problems.append(f"{roster.people[r].id} receives {times} gifts")
    for r in range(roster.n):
        if r not in received:
            problems.append(f"{roster.people[r].id} receives no gift")
    for g, r in gifts:
        problems.extend(_gift_problems(roster, rules, g, r))
    if rules.no_reciprocal:
        succ = dict(gifts)
        problems.extend(
            f"{roster.people[g].id} and {roster.people[r].id} give to each other (no_reciprocal)"
            for g, r in gifts
            if g < r and succ.get(r) == g
        )
    if rules.single_cycle and not problems:
        problems.extend(_circle_problems(roster, rules, dict(gifts)))
    return problems


def _gift_problems(roster: Roster, rules: Rules, g: int, r: int) -> list[str]:
    giver, receiver = roster.people[g], roster.people[r]
    gift = f"{giver.id} -> {receiver.id}"
    out: list[str] = []
    if g == r:
        out.append(f"{giver.id} gives to themselves")
    if receiver.id in giver.exclusions:
        out.append(f"{gift}: {giver.id} excludes {receiver.id}")
    if giver.group is not None and giver.group == receiver.group and g != r:
        out.append(f"{gift}: both are in group {giver.group}")
    tol = rules.budget_tolerance
    if tol is not None and abs(giver.budget - receiver.budget) > tol:
        out.append(
            f"{gift}: budgets {giver.budget} and {receiver.budget} differ by more than {tol}"
        )
    if rules.cross_region_only and giver.region == receiver.region:
        out.append(f"{gift}: both are in region {giver.region} (cross_region_only)")
    if rules.regional and giver.region != receiver.region:
        out.append(f"{gift}: crosses from {giver.region} to {receiver.region} (regions apart)")
    return out


def _circle_problems(roster: Roster, rules: Rules, succ: Mapping[int, int]) -> list[str]:
    label, _ = cycle_labels(np.asarray([succ[i] for i in range(roster.n)], dtype=np.int64))
    out: list[str] = []
    for shard in shards_of(roster, rules):
        circles = np.unique(label[shard.members]).size
        if circles > 1:
            where = f" in region {shard.region}" if shard.region is not None else ""
            out.append(f"the gifts{where} form {circles} circles, not one (single_cycle)")
    return out


def cost_of(participants: Sequence[Participant], rules: Rules, pairs: Mapping[str, str]) -> float:
    """Return the documented total cost of ``pairs`` (see :mod:`northpole.exchange.cost`).

    Raises:
        InvalidInput: Malformed participants, or ``pairs`` names an unknown id.
    """
    roster = build_roster(participants, rules)
    total = 0
    for g, r in _pairs_positions(roster, pairs):
        giver, receiver = roster.people[g], roster.people[r]
        wishes = giver.preferences
        rank = wishes.index(receiver.id) + 1 if receiver.id in wishes else None
        total += gift_cost(
            rank=rank,
            same_region=giver.region == receiver.region,
            rules=rules,
            max_wishes=roster.max_wishes,
        )
    return float(total)
