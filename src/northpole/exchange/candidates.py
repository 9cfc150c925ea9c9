"""The allowed-gift graph of one shard, with each gift's cost.

A giver ``g`` may give to receiver ``r`` (an *allowed edge*) when ``g != r``,
``r`` is not in ``g``'s exclusions, they are not in the same group, their
budgets differ by at most ``Rules.budget_tolerance`` (when set), and, with
``Rules.cross_region_only``, their regions differ.

People are relabelled ``0..n-1`` in budget order (ties in a random order when
an ``rng`` is given), so that with a budget tolerance each giver's receivers
form one contiguous range of labels: the graph is built range by range with
numpy and comes out sorted, without ever forming an ``n x n`` matrix above
:data:`DENSE_MAX`. Three shapes:

``dense``
    ``n <= DENSE_MAX`` and at least :data:`DENSE_MIN_FILL` of all pairs in
    range: boolean and cost matrices.
``sparse``
    every allowed edge, as CSR arrays (at most :data:`EDGE_LIMIT` of them).
``sampled``
    more edges than that: each giver keeps its allowed wishes and
    :data:`SAMPLE_K` receivers drawn at random from its range. Solutions on it
    are valid but only proven optimal when they reach the lower bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from northpole.exchange.cost import REGION_PENALTY, region_penalty, unwished_cost
from northpole.exchange.model import RegionPreference, Rules
from northpole.exchange.roster import Roster, Shard

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

#: Largest shard solved on a dense matrix.
DENSE_MAX = 10_000
#: Smallest share of the n*n pairs in budget range for a dense matrix to pay.
DENSE_MIN_FILL = 0.05
#: Most edges enumerated in full; above this, candidates are sampled.
EDGE_LIMIT = 80_000_000
#: Random candidates drawn per giver in a sampled graph.
SAMPLE_K = 48

_BLOCK = 1024
_CHUNK_EDGES = 4_000_000


@dataclass(frozen=True, slots=True)
class Local:
    """A shard's people relabelled ``0..n-1`` in budget order, and their attributes."""

    people: IntArray  # local label -> roster position
    budget: FloatArray
    group: IntArray  # equal codes: same group; people without one get unique codes
    region: IntArray
    excl_codes: IntArray  # sorted g * n + r of exclusions inside the shard
    wish_g: IntArray
    wish_r: IntArray
    wish_rank: IntArray

    @property
    def n(self) -> int:
        """How many people the shard has."""
        return int(self.people.size)


def localize(
    roster: Roster, shard: Shard, rng: random.Random | None, *, wishes: bool = True
) -> Local:
    """Relabel a shard's members in budget order (random among equal budgets).

    With ``wishes=False`` the wishes are left out (every gift then costs the
    same), which is all that feasibility questions need.
    """
    members = shard.members.copy()
    if rng is not None:
        perm = np.random.default_rng(rng.getrandbits(128)).permutation(members.size)
        members = members[perm]
    budgets = np.fromiter((roster.people[int(i)].budget for i in members), np.float64, members.size)
    order = np.argsort(budgets, kind="stable")
    members, budgets = members[order], budgets[order]
    n = members.size
    to_local = {int(g): loc for loc, g in enumerate(members)}
    groups: dict[str, int] = {}
    group = np.empty(n, dtype=np.int64)
    excl: list[int] = []
    wg: list[int] = []
    wr: list[int] = []
    wk: list[int] = []
    for loc, g in enumerate(members):
        p = roster.people[int(g)]
        group[loc] = -1 - loc if p.group is None else groups.setdefault(p.group, len(groups))
        for x in p.exclusions:
            r = to_local.get(roster.index[x])
            if r is not None:
                excl.append(loc * n + r)
        for rank, x in enumerate(p.preferences if wishes else (), start=1):
            r = to_local.get(roster.index[x])
            if r is not None:
                wg.append(loc)
                wr.append(r)
                wk.append(rank)
    return Local(
        people=members,
        budget=budgets,
        group=group,
        region=roster.region_codes[members],
        excl_codes=np.unique(np.asarray(excl, dtype=np.int64)),
        wish_g=np.asarray(wg, dtype=np.int64),
        wish_r=np.asarray(wr, dtype=np.int64),
        wish_rank=np.asarray(wk, dtype=np.int64),
    )


@dataclass
class Graph:
    """The allowed edges of a shard and their costs (see the module docstring).

    Attributes:
        local: The relabelled shard.
        shape: ``"dense"``, ``"sparse"`` or ``"sampled"``.
        complete: Whether every allowed edge is present (False when sampled).
        matrix_allowed, matrix_cost: The dense form (``dense`` only).
        indptr, indices, cost: CSR form: giver ``g``'s receivers are
            ``indices[indptr[g]:indptr[g+1]]``, ascending.
        row_floor: Per giver, a lower bound on the cost of any allowed gift.
    """

    local: Local
    shape: str
    complete: bool
    row_floor: IntArray
    matrix_allowed: BoolArray | None = None
    matrix_cost: IntArray | None = None
    indptr: IntArray | None = None
    indices: IntArray | None = None
    cost: IntArray | None = None
    _csc: tuple[IntArray, IntArray] | None = field(default=None, repr=False)
    _codes: IntArray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """How many people the shard has."""
        return self.local.n

    def csr(self) -> tuple[IntArray, IntArray, IntArray]:
        """Return ``(indptr, indices, cost)``, computed from the matrices if dense."""
        if self.indptr is None or self.indices is None or self.cost is None:
            if self.matrix_allowed is None or self.matrix_cost is None:
                raise ValueError("a graph needs its matrices or its CSR arrays")
            rows, cols = np.nonzero(self.matrix_allowed)
            counts = np.bincount(rows, minlength=self.n)
            self.indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
            self.indices = cols.astype(np.int64)
            self.cost = self.matrix_cost[rows, cols]
        return self.indptr, self.indices, self.cost

    def csc(self) -> tuple[IntArray, IntArray]:
        """Return ``(indptr, givers)``: receiver ``r``'s givers, ascending."""
        if self._csc is None:
            indptr, indices, _ = self.csr()
            ones = np.ones(indices.size, dtype=np.int8)
            csc = csr_matrix((ones, indices, indptr), shape=(self.n, self.n)).tocsc()
            csc.sort_indices()
            self._csc = (csc.indptr.astype(np.int64), csc.indices.astype(np.int64))
        return self._csc

    def out(self, g: int) -> IntArray:
        """Return the receivers giver ``g`` may give to, ascending."""
        if self.matrix_allowed is not None:
            return np.flatnonzero(self.matrix_allowed[g]).astype(np.int64)
        indptr, indices, _ = self.csr()
        return indices[indptr[g] : indptr[g + 1]]

    def has_edge(self, g: int, r: int) -> bool:
        """Whether ``g -> r`` is an (present) allowed edge."""
        if self.matrix_allowed is not None:
            return bool(self.matrix_allowed[g, r])
        return self.edge_index(g, r) >= 0

    def edge_index(self, g: int, r: int) -> int:
        """Return the CSR position of ``g -> r``, or -1 when it is not an edge."""
        indptr, indices, _ = self.csr()
        lo, hi = int(indptr[g]), int(indptr[g + 1])
        pos = lo + int(np.searchsorted(indices[lo:hi], r))
        return pos if pos < hi and int(indices[pos]) == r else -1

    def edge_cost(self, g: int, r: int) -> int:
        """Return the cost of ``g -> r`` (which must be an edge)."""
        if self.matrix_cost is not None:
            return int(self.matrix_cost[g, r])
        _, _, cost = self.csr()
        return int(cost[self.edge_index(g, r)])

    def codes(self) -> IntArray:
        """Return ``g * n + r`` for every CSR edge (sorted, as the CSR is)."""
        if self._codes is None:
            indptr, indices, _ = self.csr()
            rows = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(indptr))
            self._codes = rows * self.n + indices
        return self._codes

    def lookup(self, g: IntArray, r: IntArray) -> tuple[BoolArray, IntArray]:
        """Return, for the pairs ``g[i] -> r[i]``, whether each is an edge and its cost.

        The cost of a pair that is not an edge is meaningless.
        """
        if self.matrix_allowed is not None and self.matrix_cost is not None:
            return self.matrix_allowed[g, r], self.matrix_cost[g, r]
        codes = self.codes()
        _, _, cost = self.csr()
        want = g * self.n + r
        pos = np.searchsorted(codes, want)
        pos[pos >= codes.size] = 0
        return codes[pos] == want, cost[pos]

    def out_many(self, nodes: IntArray) -> tuple[IntArray, IntArray]:
        """Return every edge leaving ``nodes`` as ``(giver, receiver)`` arrays."""
        if self.matrix_allowed is not None:
            i, r = np.nonzero(self.matrix_allowed[nodes])
            return nodes[i], r.astype(np.int64)
        indptr, indices, _ = self.csr()
        starts, ends = indptr[nodes], indptr[nodes + 1]
        width = ends - starts
        src = np.repeat(nodes, width)
        offsets = np.arange(int(width.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(width) - width - starts, width
        )
        return src, indices[offsets]

    def small_matrix(self) -> list[list[int | None]]:
        """Return ``cost[g][r]`` as lists, ``None`` where not allowed (for small shards)."""
        n = self.n
        cost: list[list[int | None]] = [[None] * n for _ in range(n)]
        indptr, indices, costs = self.csr()
        for g in range(n):
            for pos in range(int(indptr[g]), int(indptr[g + 1])):
                cost[g][int(indices[pos])] = int(costs[pos])
        return cost

    def edge_count(self) -> int:
        """How many edges the graph holds."""
        if self.matrix_allowed is not None:
            return int(np.count_nonzero(self.matrix_allowed))
        indptr, _, _ = self.csr()
        return int(indptr[-1])


def _budget_ranges(local: Local, rules: Rules) -> tuple[IntArray, IntArray]:
    """Return per giver the label range ``[lo, hi)`` of receivers within budget."""
    n = local.n
    tol = rules.budget_tolerance
    if tol is None:
        return np.zeros(n, dtype=np.int64), np.full(n, n, dtype=np.int64)
    # Widened a little so rounding never drops an edge, then trimmed with the exact
    # test: |b[g] - b[r]| grows monotonically away from g in budget order.
    b = local.budget
    slack = 1e-9 * (abs(tol) + np.abs(b))
    lo = np.searchsorted(b, b - tol - slack, side="left").astype(np.int64)
    hi = np.searchsorted(b, b + tol + slack, side="right").astype(np.int64)
    while True:
        bad = np.abs(b - b[np.minimum(lo, n - 1)]) > tol
        if not bad.any():
            break
        lo[bad] += 1
    while True:
        bad = np.abs(b - b[np.maximum(hi - 1, 0)]) > tol
        if not bad.any():
            break
        hi[bad] -= 1
    return lo, hi


def _keep(
    local: Local, rules: Rules, rows: IntArray, cols: IntArray, *, in_range: bool = False
) -> BoolArray:
    """Which of the pairs ``rows[i] -> cols[i]`` are allowed edges.

    ``in_range``: the pairs come from :func:`_budget_ranges`, so their budgets
    are known to be compatible.
    """
    ok: BoolArray = np.not_equal(rows, cols)
    if local.n and int(local.group.max()) >= 0:  # somebody has a group
        ok &= local.group[rows] != local.group[cols]
    if rules.budget_tolerance is not None and not in_range:
        ok &= np.abs(local.budget[rows] - local.budget[cols]) <= rules.budget_tolerance
    if rules.cross_region_only:
        ok &= local.region[rows] != local.region[cols]
    if local.excl_codes.size:
        codes = rows * local.n + cols
        pos = np.searchsorted(local.excl_codes, codes)
        pos[pos >= local.excl_codes.size] = 0
        ok &= local.excl_codes[pos] != codes
    return ok


def _base_cost(local: Local, rules: Rules, rows: IntArray, cols: IntArray, w: int) -> IntArray:
    """The cost of unwished gifts ``rows -> cols``: ``W`` plus any region penalty."""
    cost = np.full(rows.size, w, dtype=np.int64)
    if rules.region_preference is not RegionPreference.NONE:
        same = local.region[rows] == local.region[cols]
        against = same if rules.region_preference is RegionPreference.OTHER else ~same
        cost[against] += REGION_PENALTY
    return cost


def _wish_costs(local: Local, rules: Rules) -> tuple[IntArray, IntArray, IntArray]:
    """Return the allowed wishes as ``(giver, receiver, cost)``."""
    g, r = local.wish_g, local.wish_r
    keep = _keep(local, rules, g, r)
    g, r, rank = g[keep], r[keep], local.wish_rank[keep]
    same = local.region[g] == local.region[r]
    pen = np.where(same, region_penalty(rules, True), region_penalty(rules, False))
    return g, r, rank - 1 + pen


def _row_floor(local: Local, rules: Rules, w: int) -> IntArray:
    """Per giver, a lower bound on any allowed gift's cost: its best wish, or W."""
    floor = np.full(local.n, w, dtype=np.int64)
    g, _, cost = _wish_costs(local, rules)
    np.minimum.at(floor, g, cost)
    return floor


def _apply_wishes(
    rows: IntArray,
    cols: IntArray,
    cost: IntArray,
    wishes: tuple[IntArray, IntArray, IntArray],
    n: int,
    span: tuple[int, int] | None = None,
) -> None:
    """Overwrite ``cost`` of the wished ones among the edges ``rows -> cols`` (row-sorted).

    ``wishes`` is ``(giver, receiver, cost)`` sorted by giver; ``span`` limits
    them to givers ``[start, stop)`` (the givers the edges cover).
    """
    g, r, wc = wishes
    if span is not None:
        a, b = np.searchsorted(g, span[0]), np.searchsorted(g, span[1])
        g, r, wc = g[a:b], r[a:b], wc[a:b]
    if not g.size or not rows.size:
        return
    graph_codes = rows * n + cols
    codes = g * n + r
    pos = np.searchsorted(graph_codes, codes)
    pos[pos >= graph_codes.size] = 0
    hit = graph_codes[pos] == codes
    cost[pos[hit]] = wc[hit]


def _dense(local: Local, rules: Rules, w: int) -> Graph:
    n = local.n
    allowed = np.empty((n, n), dtype=np.bool_)
    cost = np.full((n, n), w, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        block = local.group[rows, None] != local.group[None, :]
        if rules.budget_tolerance is not None:
            block &= np.abs(local.budget[rows, None] - local.budget[None, :]) <= (
                rules.budget_tolerance
            )
        same = local.region[rows, None] == local.region[None, :]
        if rules.cross_region_only:
            block &= ~same
        allowed[rows] = block
        if rules.region_preference is RegionPreference.SAME:
            cost[rows][~same] += REGION_PENALTY
        elif rules.region_preference is RegionPreference.OTHER:
            cost[rows][same] += REGION_PENALTY
    np.fill_diagonal(allowed, False)
    allowed.flat[local.excl_codes] = False
    g, r, wc = _wish_costs(local, rules)
    cost[g, r] = wc
    return Graph(
        local,
        "dense",
        complete=True,
        row_floor=_row_floor(local, rules, w),
        matrix_allowed=allowed,
        matrix_cost=cost,
    )


def _from_pairs(local: Local, rules: Rules, rows: IntArray, cols: IntArray, w: int) -> Graph:
    """Build a CSR graph from candidate pairs sorted by ``(row, col)``, dropping bad ones."""
    keep = _keep(local, rules, rows, cols)
    rows, cols = rows[keep], cols[keep]
    cost = _base_cost(local, rules, rows, cols, w)
    _apply_wishes(rows, cols, cost, _wish_costs(local, rules), local.n)
    counts = np.bincount(rows, minlength=local.n)
    return Graph(
        local,
        "sparse",
        complete=True,
        row_floor=_row_floor(local, rules, w),
        indptr=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        indices=cols,
        cost=cost,
    )


def _sparse_full(local: Local, rules: Rules, w: int, lo: IntArray, hi: IntArray) -> Graph:
    """Enumerate every in-range pair, a slice of givers at a time (bounded temporaries).

    The kept edges are written into arrays sized for every in-range pair;
    only the part written is ever touched, so only that part takes memory.
    """
    n = local.n
    ends = np.cumsum(hi - lo)
    total = int(ends[-1]) if n else 0
    cols_out = np.empty(total, dtype=np.int64)
    cost_out = np.empty(total, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    wishes = _wish_costs(local, rules)
    pos = start = 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _CHUNK_EDGES, side="right")))
        stop = min(stop, n)
        rows, cols = _enumerate(lo[start:stop], hi[start:stop])
        rows += start
        keep = _keep(local, rules, rows, cols, in_range=True)
        rows, cols = rows[keep], cols[keep]
        end = pos + rows.size
        cols_out[pos:end] = cols
        cost_out[pos:end] = _base_cost(local, rules, rows, cols, w)
        _apply_wishes(rows, cols, cost_out[pos:end], wishes, n, (start, stop))
        counts[start:stop] = np.bincount(rows - start, minlength=stop - start)
        pos, start = end, stop
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Graph(
        local,
        "sparse",
        complete=True,
        row_floor=_row_floor(local, rules, w),
        indptr=indptr,
        indices=cols_out[:pos],
        cost=cost_out[:pos],
    )


def _enumerate(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Every pair ``(g, r)`` with ``lo[g] <= r < hi[g]``, sorted."""
    width = hi - lo
    total = int(width.sum())
    rows = np.repeat(np.arange(lo.size, dtype=np.int64), width)
    starts = np.cumsum(width) - width
    cols = np.arange(total, dtype=np.int64) - np.repeat(starts - lo, width)
    return rows, cols


def _sampled(local: Local, rules: Rules, w: int, lo: IntArray, hi: IntArray, seed: int) -> Graph:
    gen = np.random.default_rng(seed)
    n = local.n
    rows = np.repeat(np.arange(n, dtype=np.int64), SAMPLE_K)
    width = np.repeat(hi - lo, SAMPLE_K)
    cols = np.repeat(lo, SAMPLE_K) + (gen.random(rows.size) * width).astype(np.int64)
    codes = np.unique(np.concatenate((rows * n + cols, local.wish_g * n + local.wish_r)))
    rows, cols = np.divmod(codes, n)
    graph = _from_pairs(local, rules, rows, cols, w)
    graph.shape = "sampled"
    graph.complete = False
    return graph


def true_neighbours(local: Local, rules: Rules, nodes: IntArray, *, givers: bool) -> IntArray:
    """Every allowed receiver of the givers ``nodes`` (or giver of the receivers ``nodes``).

    Computed from the rules, not from a graph: it checks a witness found on
    sampled candidates. Budget compatibility is symmetric, so a receiver's
    possible givers lie in the same label range as a giver's receivers.
    """
    lo, hi = _budget_ranges(local, rules)
    found: list[IntArray] = []
    for v in nodes.tolist():
        other = np.arange(int(lo[v]), int(hi[v]), dtype=np.int64)
        mine = np.full(other.size, v, dtype=np.int64)
        pairs = (mine, other) if givers else (other, mine)
        found.append(other[_keep(local, rules, *pairs)])
    return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def build_graph(
    local: Local, rules: Rules, max_wishes: int, *, seed: int = 0, force: str | None = None
) -> Graph:
    """Build the allowed-edge graph of a shard in the shape its size calls for.

    Args:
        local: The relabelled shard.
        rules: The exchange's rules.
        max_wishes: ``M`` over the whole exchange (for ``W``).
        seed: Seeds the candidate draw of a ``sampled`` graph.
        force: ``"dense"``, ``"sparse"`` or ``"sampled"`` to override the choice
            (tests and benchmarks); a dense graph is never built above
            :data:`DENSE_MAX` people.
    """
    w = unwished_cost(max_wishes)
    n = local.n
    lo, hi = _budget_ranges(local, rules)
    in_range = int((hi - lo).sum())
    shape = force
    if shape is None:
        if n <= DENSE_MAX and in_range >= DENSE_MIN_FILL * n * n:
            shape = "dense"
        elif in_range <= EDGE_LIMIT:
            shape = "sparse"
        else:
            shape = "sampled"
    if shape == "dense" and n <= DENSE_MAX:
        return _dense(local, rules, w)
    if shape == "sampled":
        return _sampled(local, rules, w, lo, hi, seed)
    return _sparse_full(local, rules, w, lo, hi)
