"""Minimum-cost assignment on a shard's graph, with ties broken by secret randomness.

Two solvers, chosen by the graph's shape:

* dense: LAPJV (Jonker-Volgenant, ``O(n^3)``, from the ``lap`` package) on the
  cost matrix, a prohibitive cost where a gift is not allowed; it solves the
  same problem as :func:`scipy.optimize.linear_sum_assignment` several times
  faster on matrices with many distinct values (``bench/matching.py``
  measures both), but only with values below :data:`LAPJV_SAFE`; matrices
  with random tie-breakers, and tie-heavy ones like the matcher's own (few
  distinct costs), go to scipy's solver (see :func:`assign`);
* sparse: :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`
  (LAPJVsp) on the CSR graph; above :data:`BLOCK` people, in blocks of
  consecutive labels (budget order), which keeps its augmenting paths short
  but gives up the proof of optimality.

Ties: people are always labelled in a secret random order (see
:mod:`northpole.exchange.candidates`), so which of several equally good
matchings the solver reaches depends on randomness the organizer cannot see.
Dense shards of up to :data:`PERTURB_DENSE_MAX` people also get random
tie-breakers: each cost is scaled by a big integer ``S = n * R`` and given a
random extra in ``[0, R)``. The extras of a whole matching add up to less than
``S``, so a matching that is cheaper on the real costs stays cheaper: the
optimum is unchanged, only which optimal matching wins is random. Every scaled
value and sum stays an integer below ``2**52``, so the floating-point solvers
compute with them exactly. (They are not used above that size because they
make the solvers many times slower: ties keep augmenting paths short.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import lap  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from northpole.exchange.candidates import Graph

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

#: Exactness bound of float64 sums used by the solvers.
_EXACT = 1 << 52
#: Largest tie-breaker range.
_MAX_R = 1 << 20
#: Largest dense shard that also gets random tie-breakers (they slow the solver
#: down, because ties make its augmenting paths short).
PERTURB_DENSE_MAX = 500
#: Largest value (forbidden entries included) handed to LAPJV.
LAPJV_SAFE = 500_000.0
#: Matrices whose allowed values are all at most this (few distinct costs, many
#: ties, like the matcher's own) go to scipy, which is faster on them than LAPJV.
TIE_HEAVY = 64.0
#: Sparse shards above this size are solved in blocks of this many labels.
BLOCK = 50_000


@dataclass(frozen=True, slots=True)
class Assignment:
    """An assignment: ``succ[g]`` is giver ``g``'s receiver.

    ``exact`` is False when it was solved in blocks, so ``cost`` is then an
    upper bound, not the relaxation's minimum.
    """

    succ: IntArray
    cost: int
    exact: bool = True


def tie_range(n: int, max_cost: int) -> int:
    """Return ``R``, the tie-breaker range that keeps every sum exact (1: no tie-breakers)."""
    if n <= 1:
        return 1
    # n^3: a dense matrix also holds forbidden entries worth n times the largest cost.
    return max(1, min(_MAX_R, _EXACT // (n * n * n * (max_cost + 2))))


def assign(weights: FloatArray, forbidden: BoolArray | None) -> IntArray | None:
    """Solve a dense problem: ``succ[row]``, or ``None`` if no allowed perfect matching.

    ``weights`` holds non-negative integers (as floats) and is modified.

    * LAPJV solves it when the allowed values go above :data:`TIE_HEAVY` and
      every value, a forbidden entry's included, stays under
      :data:`LAPJV_SAFE`. A forbidden entry becomes ``n * max + 1``, more than
      any matching of allowed entries costs, so the optimum uses one only when
      no allowed perfect matching exists.
    * Otherwise scipy's solver does, ``inf`` marking the forbidden entries:
      LAPJV compares against a fixed large constant inside and goes wrong with
      bigger values (the random tie-breakers), and it is slower on tie-heavy
      matrices like the matcher's own (10,000 people with wishes: 15 s against
      scipy's 2 s, while on integers in ``[0, 1000)`` it is 3 times faster).
    """
    n = int(weights.shape[0])
    mask = forbidden if forbidden is not None and bool(forbidden.any()) else None
    if mask is not None:
        top = float(np.max(weights, where=~mask, initial=0.0))
        fill = n * top + 1
    else:
        top = fill = float(weights.max(initial=0.0))
    if TIE_HEAVY < top and fill < LAPJV_SAFE:
        if mask is not None:
            weights[mask] = fill
        _, x, _ = lap.lapjv(weights)
        succ = np.asarray(x, dtype=np.int64)
        if mask is not None and mask[np.arange(n), succ].any():
            return None
        return succ
    if mask is not None:
        weights[mask] = np.inf
    try:
        rows, cols = linear_sum_assignment(weights)
    except ValueError:  # "cost matrix is infeasible"
        return None
    succ = np.empty(n, dtype=np.int64)
    succ[rows] = cols
    return succ


def perturbed(
    cost: IntArray, n: int, max_cost: int, gen: np.random.Generator
) -> tuple[FloatArray, int]:
    """Return ``cost * S + noise`` as floats, and ``S`` (see the module docstring)."""
    r = tie_range(n, max_cost)
    scale = n * r
    out = cost.astype(np.float64) * scale
    if r > 1:
        out += gen.integers(0, r, size=cost.shape).astype(np.float64)
    return out, scale


def solve_dense(
    graph: Graph, rng: random.Random, *, perturb: bool | None = None
) -> Assignment | None:
    """Solve on the dense matrix; ``None`` when no perfect matching exists."""
    allowed, cost = graph.matrix_allowed, graph.matrix_cost
    if allowed is None or cost is None:
        raise ValueError("solve_dense needs a dense graph")
    n = graph.n
    if perturb is None:
        perturb = n <= PERTURB_DENSE_MAX
    if perturb:
        gen = np.random.default_rng(rng.getrandbits(128))
        weights, _ = perturbed(cost, n, int(cost.max(initial=0)), gen)
    else:
        weights = cost.astype(np.float64)
    succ = assign(weights, ~allowed)
    if succ is None:
        return None
    return Assignment(succ, int(cost[np.arange(n), succ].sum()))


def _full_matching(
    indptr: IntArray, indices: IntArray, weights: FloatArray, n: int
) -> IntArray | None:
    """Run LAPJVsp on one CSR problem; ``None`` when it has no perfect matching."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if indices.size == 0:
        return None
    matrix = csr_matrix((weights, indices, indptr), shape=(n, n))
    try:
        _, cols = min_weight_full_bipartite_matching(matrix)
    except ValueError:  # "no full matching exists"
        return None
    return np.asarray(cols, dtype=np.int64)


def _block(
    indptr: IntArray, indices: IntArray, weights: FloatArray, lo: int, hi: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """The subproblem of labels ``[lo, hi)``: its rows, and only edges staying inside."""
    a, b = int(indptr[lo]), int(indptr[hi])
    cols = indices[a:b]
    inside = (cols >= lo) & (cols < hi)
    rows = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(indptr[lo : hi + 1]))
    counts = np.bincount(rows[inside], minlength=hi - lo)
    sub_ptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return sub_ptr, cols[inside] - lo, weights[a:b][inside]


def _solve_blocks(
    indptr: IntArray, indices: IntArray, weights: FloatArray, n: int, size: int
) -> IntArray | None:
    """Solve consecutive label blocks apart; a block without a perfect matching is
    merged with the next one, and the last resort is the whole graph."""
    succ = np.empty(n, dtype=np.int64)
    lo = 0
    while lo < n:
        hi = min(n, lo + size)
        if n - hi < size // 2:
            hi = n
        while True:
            sub = _block(indptr, indices, weights, lo, hi)
            cols = _full_matching(*sub, hi - lo)
            if cols is not None or hi == n:
                break
            hi = min(n, hi + size)
        if cols is None:
            return None if lo == 0 else _full_matching(indptr, indices, weights, n)
        succ[lo:hi] = cols + lo
        lo = hi
    return succ


def solve_matrix(
    cost: IntArray, rng: random.Random, *, perturb: bool | None = None
) -> Assignment | None:
    """Assign rows to columns of a full cost matrix at least cost, ties at random.

    The dense solver on a bare matrix (every pair allowed): rows and columns
    are relabelled in a random order first (as a shard's people are), and the
    answer is mapped back.
    """
    n = int(cost.shape[0])
    gen = np.random.default_rng(rng.getrandbits(128))
    rows, cols = gen.permutation(n), gen.permutation(n)
    shuffled = cost[np.ix_(rows, cols)]
    if perturb is None:
        perturb = n <= PERTURB_DENSE_MAX
    if perturb:
        weights, _ = perturbed(shuffled, n, int(shuffled.max(initial=0)), gen)
    else:
        weights = shuffled.astype(np.float64)
    del shuffled
    assigned = assign(weights, None)
    if assigned is None:  # pragma: no cover - every pair is allowed
        return None
    succ = np.empty(n, dtype=np.int64)
    succ[rows] = cols[assigned]
    return Assignment(succ, int(cost[np.arange(n), succ].sum()))


def solve_sparse(
    graph: Graph, rng: random.Random, *, perturb: bool = False, block: int | None = None
) -> Assignment | None:
    """Solve on the CSR graph; ``None`` when it has no perfect matching.

    Args:
        graph: A sparse (or sampled) graph.
        rng: Randomness for the tie-breakers.
        perturb: Add random tie-breakers (exact, but they make LAPJVsp far
            slower: its shortest paths stop being short when costs stop tying).
        block: Solve label blocks of this size apart (``None``: :data:`BLOCK`
            above :data:`BLOCK` people, else the whole graph at once). The
            result is valid; it is optimal only if it also reaches the lower
            bound, which the caller checks.
    """
    indptr, indices, cost = graph.csr()
    n = graph.n
    if indices.size == 0:
        return None
    max_cost = int(cost.max())
    if perturb:
        gen = np.random.default_rng(rng.getrandbits(128))
        # +1: an explicit zero weight would not count as an edge.
        weights, _ = perturbed(cost + 1, n, max_cost + 1, gen)
    else:
        weights = (cost + 1).astype(np.float64)
    size = block if block is not None else (BLOCK if n > BLOCK else n)
    if size >= n:
        succ = _full_matching(indptr, indices, weights, n)
    else:
        succ = _solve_blocks(indptr, indices, weights, n, size)
    if succ is None:
        return None
    return Assignment(succ, _sum_costs(graph, succ), exact=size >= n)


def _sum_costs(graph: Graph, succ: IntArray) -> int:
    """Return the total cost of the gifts ``g -> succ[g]`` (all edges of the graph)."""
    indptr, indices, cost = graph.csr()
    codes = np.repeat(np.arange(graph.n, dtype=np.int64), np.diff(indptr)) * graph.n + indices
    want = np.arange(graph.n, dtype=np.int64) * graph.n + succ
    pos = np.searchsorted(codes, want)
    return int(cost[pos].sum())


def solve(graph: Graph, rng: random.Random) -> Assignment | None:
    """Solve the assignment relaxation with the solver the graph's shape calls for."""
    if graph.matrix_allowed is not None:
        return solve_dense(graph, rng)
    return solve_sparse(graph, rng)
