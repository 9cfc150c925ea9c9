"""An independent brute-force oracle for the exchange matcher's tests.

Written from the rules in docs/matching.md, not from the matcher's code: the
allowed gifts, the cost, and every valid matching by enumeration (small n).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from northpole.exchange.model import Participant, RegionPreference, Rules


def allowed(rules: Rules, g: Participant, r: Participant) -> bool:
    """Whether ``g`` may give to ``r`` under the hard constraints."""
    if g.id == r.id or r.id in g.exclusions:
        return False
    if g.group is not None and g.group == r.group:
        return False
    tol = rules.budget_tolerance
    if tol is not None and abs(g.budget - r.budget) > tol:
        return False
    if rules.cross_region_only and g.region == r.region:
        return False
    return not (rules.regional and g.region != r.region)


def gift_cost(people: Sequence[Participant], rules: Rules, g: Participant, r: Participant) -> int:
    """The documented cost of ``g -> r``."""
    m = max((len(p.preferences) for p in people), default=0)
    base = g.preferences.index(r.id) if r.id in g.preferences else m + 1
    same = g.region == r.region
    if rules.region_preference is RegionPreference.SAME and not same:
        base += 1
    if rules.region_preference is RegionPreference.OTHER and same:
        base += 1
    return base


def cycles_of(succ: dict[str, str]) -> list[list[str]]:
    """The cycles of a permutation given as giver -> receiver."""
    seen: set[str] = set()
    out = []
    for start in succ:
        if start in seen:
            continue
        cyc = [start]
        seen.add(start)
        x = succ[start]
        while x != start:
            cyc.append(x)
            seen.add(x)
            x = succ[x]
        out.append(cyc)
    return out


def is_valid(people: Sequence[Participant], rules: Rules, succ: dict[str, str]) -> bool:
    """Whether ``succ`` satisfies every hard constraint (checked from scratch)."""
    by_id = {p.id: p for p in people}
    if sorted(succ) != sorted(by_id) or sorted(succ.values()) != sorted(by_id):
        return False
    if not all(allowed(rules, by_id[g], by_id[r]) for g, r in succ.items()):
        return False
    if rules.no_reciprocal and any(succ[r] == g for g, r in succ.items()):
        return False
    if rules.single_cycle:
        cycles = cycles_of(succ)
        if rules.regional:
            regions = [by_id[c[0]].region for c in cycles]
            return len(regions) == len(set(regions))
        return len(cycles) == 1
    return True


def _perms(people: Sequence[Participant], rules: Rules) -> Iterator[dict[str, str]]:
    ids = [p.id for p in people]
    by_id = {p.id: p for p in people}
    out = {i: [r for r in ids if allowed(rules, by_id[i], by_id[r])] for i in ids}
    succ: dict[str, str] = {}
    used: set[str] = set()

    def rec(k: int) -> Iterator[dict[str, str]]:
        if k == len(ids):
            yield dict(succ)
            return
        g = ids[k]
        for r in out[g]:
            if r in used or (rules.no_reciprocal and succ.get(r) == g):
                continue
            succ[g] = r
            used.add(r)
            yield from rec(k + 1)
            used.discard(r)
            del succ[g]

    for s in rec(0):
        if is_valid(people, rules, s):
            yield s


@dataclass
class Brute:
    """Every valid matching's cost: the least, and the optimal matchings."""

    best: int | None
    optimal: list[dict[str, str]]
    count: int


def brute(people: Sequence[Participant], rules: Rules) -> Brute:
    """Enumerate every valid matching (small n only)."""
    best: int | None = None
    optimal: list[dict[str, str]] = []
    count = 0
    if len(people) < 2:
        return Brute(None, [], 0)
    by_id = {p.id: p for p in people}
    for s in _perms(people, rules):
        count += 1
        c = sum(gift_cost(people, rules, by_id[g], by_id[r]) for g, r in s.items())
        if best is None or c < best:
            best, optimal = c, [s]
        elif c == best:
            optimal.append(s)
    return Brute(best, optimal, count)


REGIONS = ["north", "south", "east"]


@st.composite
def instances(draw: st.DrawFn, max_n: int = 7) -> tuple[list[Participant], Rules]:
    """Random small exchanges with random exclusions, groups, budgets, wishes and rules."""
    n = draw(st.integers(0, max_n))
    ids = [f"p{i}" for i in range(n)]
    n_regions = draw(st.integers(1, 3))
    people = []
    for i in ids:
        others = [x for x in ids if x != i]
        people.append(
            Participant(
                id=i,
                region=draw(st.sampled_from(REGIONS[:n_regions])),
                budget=float(draw(st.sampled_from([10, 20, 25, 40]))),
                exclusions=frozenset(draw(st.lists(st.sampled_from(others), max_size=2)))
                if others
                else frozenset(),
                preferences=tuple(draw(st.lists(st.sampled_from(others), max_size=3, unique=True)))
                if others
                else (),
                group=draw(st.sampled_from([None, None, "g1", "g2"])),
            )
        )
    cross_only = draw(st.booleans()) and draw(st.booleans())
    rules = Rules(
        budget_tolerance=draw(st.sampled_from([None, None, 0.0, 10.0, 15.0])),
        no_reciprocal=draw(st.booleans()),
        single_cycle=draw(st.booleans()) and draw(st.booleans()),
        cross_region_only=cross_only,
        allow_cross_region=draw(st.booleans()),
        region_preference=draw(st.sampled_from(list(RegionPreference))),
    )
    return people, rules
