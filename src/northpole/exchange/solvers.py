"""Minimum-cost assignment on a shard's graph, with ties broken by secret randomness.

Two solvers, chosen by the graph's shape:

* dense: :func:`scipy.optimize.linear_sum_assignment` (shortest augmenting
  paths, ``O(n^3)``) on the cost matrix, ``inf`` where a gift is not allowed;
* sparse: :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`
  (LAPJVsp) on the CSR graph.

Ties: people are already labelled in a random order (see
:mod:`northpole.exchange.candidates`), and each cost may also be scaled by a big
integer ``S`` and given a random tie-breaker in ``[0, R)`` with ``n * R <= S``.
The tie-breakers of a whole matching add up to less than ``S``, so a matching
that is cheaper on the real costs stays cheaper: the optimum is unchanged,
only which of the equally good matchings comes out is random. Every scaled
value stays an integer below ``2**52`` (sums included), so the floating-point
solvers compute with them exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from northpole.exchange.candidates import Graph

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Exactness bound of float64 sums used by the solvers.
_EXACT = 1 << 52
#: Largest tie-breaker range.
_MAX_R = 1 << 20
#: Largest dense shard that also gets random tie-breakers (they slow the solver
#: down, because ties make its augmenting paths short).
PERTURB_DENSE_MAX = 2_000


@dataclass(frozen=True, slots=True)
class Assignment:
    """A minimum-cost assignment: ``succ[g]`` is giver ``g``'s receiver."""

    succ: IntArray
    cost: int


def tie_range(n: int, max_cost: int) -> int:
    """Return ``R``, the tie-breaker range that keeps every sum exact (1: no tie-breakers)."""
    if n <= 1:
        return 1
    return max(1, min(_MAX_R, _EXACT // (n * n * (max_cost + 2))))


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
    weights[~allowed] = np.inf
    try:
        rows, cols = linear_sum_assignment(weights)
    except ValueError:  # "cost matrix is infeasible"
        return None
    succ = np.empty(n, dtype=np.int64)
    succ[rows] = cols
    return Assignment(succ, int(cost[rows, cols].sum()))


def solve_sparse(graph: Graph, rng: random.Random, *, perturb: bool = True) -> Assignment | None:
    """Solve on the CSR graph; ``None`` when it has no perfect matching."""
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
    matrix = csr_matrix((weights, indices, indptr), shape=(n, n))
    try:
        _, cols = min_weight_full_bipartite_matching(matrix)
    except ValueError:  # "no full matching exists"
        return None
    succ = np.asarray(cols, dtype=np.int64)
    return Assignment(succ, _sum_costs(graph, succ))


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
