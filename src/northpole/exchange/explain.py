"""Why no valid matching exists: a Hall witness, or the rule that forbids it.

A perfect matching of givers to allowed receivers exists unless some ``k``
givers can only give to ``j < k`` receivers (Hall's theorem), or mirrored,
``k`` receivers can only be given to by ``j < k`` givers. The witness comes
from a maximum matching (Hopcroft-Karp, :func:`scipy.sparse.csgraph.maximum_bipartite_matching`):
from a giver it leaves unmatched, follow alternating paths (any allowed edge
to a receiver, then that receiver's matched giver). The givers reached, ``R``,
can only give to the receivers reached, and those are all matched to givers
of ``R`` other than the start, so ``|N(R)| = |R| - 1``. ``R`` is also
*minimal*: for every ``s`` in ``R``, flipping the alternating path to ``s``
matches all of ``R`` but ``s``, so no proper subset of ``R`` violates Hall.
It need not be the smallest violator (finding that is NP-hard in general);
the matcher tries a few starts on the giver side and, when that witness has
more than :data:`_GOOD_ENOUGH` people, on the receiver side too, and keeps the
smallest.

With ``no_reciprocal`` or ``single_cycle`` a perfect matching may exist and
still no valid one; then the explanation is a ``RULE``: for small shards the
exact solver decides, and for larger ones a circle is impossible when the
allowed graph is not strongly connected (a group nobody outside gives to, or
that gives to nobody outside), and gifts without 2-cycles are when two people
may only give to each other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.sparse.csgraph import maximum_bipartite_matching as _max_matching

from northpole.exchange.candidates import Graph, build_graph, localize, true_neighbours
from northpole.exchange.exact import EXACT_MAX, solve_exact
from northpole.exchange.model import Explanation, ExplanationKind, Participant, Rules
from northpole.exchange.roster import Roster, Shard, build_roster, shards_of

IntArray = npt.NDArray[np.int64]

#: How many unmatched starts per side are tried for a small witness.
_STARTS = 4
#: Largest alternating reach walked in Python before scipy's BFS takes over.
_SMALL_REACH = 20_000
#: A giver-side witness this small is kept without trying the receiver side.
_GOOD_ENOUGH = 8
#: How many names a message lists before "and N others".
_NAMES = 8


def explain(participants: Sequence[Participant], rules: Rules) -> Explanation | None:
    """Return why no valid matching exists, or ``None`` when one does.

    For each shard (region, when ``rules.regional``) in turn: too few people,
    a rule impossible whatever the candidates, a Hall violation (minimal, see
    the module docstring), or a ``single_cycle``/``no_reciprocal`` obstacle.
    Exact for shards of up to :data:`~northpole.exchange.exact.EXACT_MAX`
    people; above that the two cycle rules are checked for the obstacles named
    in the module docstring only.

    Raises:
        InvalidInput: The input is malformed (``field`` says where).
    """
    roster = build_roster(participants, rules)
    if roster.n < 2:
        return _too_few(roster, Shard(None, np.arange(roster.n, dtype=np.int64)))
    for shard in shards_of(roster, rules):
        found = explain_shard(roster, shard, rules)
        if found is not None:
            return found
    return None


def explain_shard(
    roster: Roster, shard: Shard, rules: Rules, graph: Graph | None = None
) -> Explanation | None:
    """Explain why one shard has no valid matching (``None`` if it has one)."""
    if shard.members.size < 2:
        return _too_few(roster, shard)
    ruled = _rule_only(roster, shard, rules)
    if ruled is not None:
        return ruled
    if graph is None:
        graph = build_graph(localize(roster, shard, None, wishes=False), rules, roster.max_wishes)
    hall = hall_witness(graph)
    if hall is not None and not graph.complete:
        hall = _confirmed(graph, rules, *hall)
    if hall is not None:
        givers, receivers = hall
        return _hall(roster, shard, graph, givers, receivers)
    if not graph.complete:
        return None  # sampled candidates: nothing more can be proven from them
    if rules.single_cycle or rules.no_reciprocal:
        return _cycle_rules(roster, shard, rules, graph)
    return None


def names(roster: Roster, positions: Sequence[int] | IntArray) -> str:
    """List participants for a message: ``a, b and c`` (long lists are cut)."""
    ids = [roster.people[int(p)].id for p in positions]
    if len(ids) > _NAMES:
        shown = ", ".join(ids[:_NAMES])
        return f"{shown} and {len(ids) - _NAMES} others"
    if len(ids) <= 1:
        return "".join(ids)
    return ", ".join(ids[:-1]) + " and " + ids[-1]


def _where(shard: Shard) -> str:
    return f" in region {shard.region}" if shard.region is not None else ""


def _too_few(roster: Roster, shard: Shard) -> Explanation:
    who = names(roster, shard.members)
    if shard.region is None:
        msg = f"an exchange needs at least 2 participants; it has {shard.members.size}"
    else:
        msg = (
            f"region {shard.region} has only {who}: regions are matched apart, so each "
            "needs at least 2 people (add someone, or allow cross-region matching)"
        )
    ids = tuple(roster.people[int(p)].id for p in shard.members)
    return Explanation(ExplanationKind.TOO_FEW, msg, ids, ids, None, shard.region)


def _rule_only(roster: Roster, shard: Shard, rules: Rules) -> Explanation | None:
    ids = tuple(roster.people[int(p)].id for p in shard.members)
    regions = np.unique(roster.region_codes[shard.members])
    if rules.cross_region_only and regions.size < 2:
        return Explanation(
            ExplanationKind.RULE,
            f"cross_region_only: everybody ({names(roster, shard.members)}) is in region "
            f"{roster.region_names[int(regions[0])]}, so nobody can give to another region",
            ids,
            ids,
            "cross_region_only",
            shard.region,
        )
    if rules.no_reciprocal and shard.members.size == 2:
        return Explanation(
            ExplanationKind.RULE,
            f"no_reciprocal: {names(roster, shard.members)}{_where(shard)} could only give "
            "to each other, which the rule forbids; add a third person or drop the rule",
            ids,
            ids,
            "no_reciprocal",
            shard.region,
        )
    return None


# -- Hall witnesses ----------------------------------------------------------------


def _reach_small(
    indptr: IntArray, indices: IntArray, mate: IntArray, start: int, limit: int
) -> IntArray | None:
    """Breadth-first alternating reach from ``start``; ``None`` once past ``limit`` rows."""
    seen = {start}
    frontier = [start]
    while frontier:
        nxt: list[int] = []
        for v in frontier:
            for w in mate[indices[indptr[v] : indptr[v + 1]]].tolist():
                if w >= 0 and w not in seen:
                    seen.add(w)
                    nxt.append(w)
        if len(seen) > limit:
            return None
        frontier = nxt
    return np.sort(np.fromiter(seen, dtype=np.int64, count=len(seen)))


def _alternating_reach(
    indptr: IntArray, indices: IntArray, mate: IntArray, starts: IntArray
) -> IntArray:
    """Return the smallest set of rows reachable by alternating paths from one start.

    Small reaches are walked directly; when every start reaches more than
    :data:`_SMALL_REACH` rows, the hop graph is built once for scipy's BFS.
    """
    found = [_reach_small(indptr, indices, mate, s, _SMALL_REACH) for s in starts.tolist()]
    small = [f for f in found if f is not None]
    if small:
        return min(small, key=lambda a: a.size)
    n = indptr.size - 1
    target = mate[indices]
    keep = target >= 0
    running = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    hop_ptr = running[indptr]
    hop = csr_matrix(
        (np.ones(int(hop_ptr[-1]), dtype=np.int8), target[keep], hop_ptr), shape=(n, n)
    )
    best = np.arange(n, dtype=np.int64)
    for s in starts.tolist():
        reached = breadth_first_order(hop, s, directed=True, return_predecessors=False)
        if reached.size < best.size:
            best = np.sort(np.asarray(reached, dtype=np.int64))
    return best


def hall_witness(graph: Graph) -> tuple[IntArray, IntArray] | None:
    """Return ``(givers, receivers)`` of a minimal Hall violator, or ``None``.

    Either ``len(givers) > len(receivers)`` and the givers may only give to
    the receivers, or ``len(receivers) > len(givers)`` and only those givers
    may give to the receivers. Labels are the graph's local ones.
    """
    indptr, indices, _ = graph.csr()
    n = graph.n
    out_deg = np.diff(indptr)
    if (out_deg == 0).any():
        return np.array([int(np.flatnonzero(out_deg == 0)[0])]), np.empty(0, dtype=np.int64)
    in_deg = np.bincount(indices, minlength=n)
    if (in_deg == 0).any():
        return np.empty(0, dtype=np.int64), np.array([int(np.flatnonzero(in_deg == 0)[0])])
    matrix = csr_matrix((np.ones(indices.size, dtype=np.int8), indices, indptr), shape=(n, n))
    col_of_row = np.asarray(_max_matching(matrix, perm_type="column"), dtype=np.int64)
    if (col_of_row >= 0).all():
        return None
    row_of_col = np.full(n, -1, dtype=np.int64)
    matched = col_of_row >= 0
    row_of_col[col_of_row[matched]] = np.flatnonzero(matched)
    free_rows = np.flatnonzero(~matched)[:_STARTS]
    free_cols = np.flatnonzero(row_of_col < 0)[:_STARTS]
    givers = _alternating_reach(indptr, indices, row_of_col, free_rows)
    if givers.size <= _GOOD_ENOUGH:
        return givers, _neighbours(indptr, indices, givers)
    in_ptr, in_givers = graph.csc()
    receivers = _alternating_reach(in_ptr, in_givers, col_of_row, free_cols)
    if givers.size <= receivers.size:
        return givers, _neighbours(indptr, indices, givers)
    return _neighbours(in_ptr, in_givers, receivers), receivers


def _confirmed(
    graph: Graph, rules: Rules, givers: IntArray, receivers: IntArray
) -> tuple[IntArray, IntArray] | None:
    """Recheck a witness found on sampled candidates against every allowed gift."""
    if givers.size > receivers.size:
        full = true_neighbours(graph.local, rules, givers, givers=True)
        return (givers, full) if full.size < givers.size else None
    full = true_neighbours(graph.local, rules, receivers, givers=False)
    return (full, receivers) if full.size < receivers.size else None


def _neighbours(indptr: IntArray, indices: IntArray, nodes: IntArray) -> IntArray:
    parts = [indices[indptr[v] : indptr[v + 1]] for v in nodes.tolist()]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def _hall(
    roster: Roster, shard: Shard, graph: Graph, givers: IntArray, receivers: IntArray
) -> Explanation:
    people = graph.local.people
    g_pos, r_pos = people[givers], people[receivers]
    where = _where(shard)
    fix = "relax their exclusions, groups or the budget tolerance"
    if givers.size > receivers.size:
        if receivers.size == 0:
            msg = f"{names(roster, g_pos)}{where} may give to nobody; {fix}"
        else:
            short = givers.size - receivers.size
            msg = (
                f"{names(roster, g_pos)}{where} ({givers.size} people) may only give to "
                f"{names(roster, r_pos)} ({receivers.size}), so {short} of them would have "
                f"nobody to give to; {fix}"
            )
    elif givers.size == 0:
        msg = f"nobody{where} may give to {names(roster, r_pos)}; {fix}"
    else:
        short = receivers.size - givers.size
        msg = (
            f"only {names(roster, g_pos)} ({givers.size}) may give to {names(roster, r_pos)}"
            f"{where} ({receivers.size} people), so {short} of them would get no gift; {fix}"
        )
    return Explanation(
        ExplanationKind.HALL,
        msg,
        tuple(roster.people[int(p)].id for p in g_pos),
        tuple(roster.people[int(p)].id for p in r_pos),
        None,
        shard.region,
    )


# -- single_cycle and no_reciprocal ---------------------------------------------------


def _cycle_rules(roster: Roster, shard: Shard, rules: Rules, graph: Graph) -> Explanation | None:
    rule = "single_cycle" if rules.single_cycle else "no_reciprocal"
    if rules.single_cycle:
        found = _not_strongly_connected(roster, shard, graph)
        if found is not None:
            return found
    if rules.no_reciprocal:
        found = _forced_pair(roster, shard, graph)
        if found is not None:
            return found
    if graph.n > EXACT_MAX:
        return None
    cost = graph.small_matrix()
    exact = solve_exact(
        cost,
        no_reciprocal=rules.no_reciprocal,
        single_cycle=rules.single_cycle,
        rng=random.Random(0),  # noqa: S311 - only feasibility is used, not the draw
    )
    if exact is not None:
        return None
    ids = tuple(roster.people[int(p)].id for p in graph.local.people)
    what = "one gift circle through everybody" if rules.single_cycle else "gifts without pairs"
    return Explanation(
        ExplanationKind.RULE,
        f"{rule}: {what}{_where(shard)} is impossible with the allowed gifts of "
        f"{names(roster, graph.local.people)}; relax exclusions, groups or budgets, "
        f"or drop {rule}",
        ids,
        ids,
        rule,
        shard.region,
    )


def _not_strongly_connected(roster: Roster, shard: Shard, graph: Graph) -> Explanation | None:
    indptr, indices, _ = graph.csr()
    n = graph.n
    matrix = csr_matrix((np.ones(indices.size, dtype=np.int8), indices, indptr), shape=(n, n))
    count, comp = connected_components(matrix, directed=True, connection="strong")
    if count <= 1:
        return None
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    cross = comp[rows] != comp[indices]
    has_in = np.zeros(count, dtype=bool)
    has_out = np.zeros(count, dtype=bool)
    has_in[comp[indices[cross]]] = True
    has_out[comp[rows[cross]]] = True
    sizes = np.bincount(comp, minlength=count)
    closed = np.flatnonzero(~has_in | ~has_out)
    pick = int(closed[np.argmin(sizes[closed])])
    members = np.flatnonzero(comp == pick)
    pos = graph.local.people[members]
    ids = tuple(roster.people[int(p)].id for p in pos)
    if not has_in[pick]:
        why = f"nobody else{_where(shard)} may give to {names(roster, pos)}"
    else:
        why = f"{names(roster, pos)} may give to nobody else{_where(shard)}"
    return Explanation(
        ExplanationKind.RULE,
        f"single_cycle: {why}, so one gift circle cannot pass through them and the others; "
        "relax their exclusions, groups or budgets, or drop single_cycle",
        ids,
        ids,
        "single_cycle",
        shard.region,
    )


def _forced_pair(roster: Roster, shard: Shard, graph: Graph) -> Explanation | None:
    for ptr, idx in (graph.csr()[:2], graph.csc()):
        deg = np.diff(ptr)
        ones = np.flatnonzero(deg == 1)
        if not ones.size:
            continue
        only = np.full(graph.n, -1, dtype=np.int64)
        only[ones] = idx[ptr[ones]]
        mutual = ones[only[only[ones]] == ones]
        if mutual.size:
            a = int(mutual[0])
            pos = graph.local.people[[a, int(only[a])]]
            ids = tuple(roster.people[int(p)].id for p in pos)
            return Explanation(
                ExplanationKind.RULE,
                f"no_reciprocal: {names(roster, pos)}{_where(shard)} have nobody but each "
                "other to give to (or to get from), which the rule forbids; relax their "
                "exclusions, groups or budgets, or drop no_reciprocal",
                ids,
                ids,
                "no_reciprocal",
                shard.region,
            )
    return None
