"""Repairing an assignment into one without 2-cycles, or into a single cycle.

An assignment is a permutation, so its gifts form cycles; the relaxation's
optimum may hold 2-cycles (A -> B -> A) and many cycles. Both repairs move
only along allowed edges and pick, among the moves available, one of least
added cost (ties at random):

* :func:`break_two_cycles` splices each 2-cycle ``a <-> b`` into another
  cycle through an edge ``x -> y``: ``x -> a -> b -> y`` (or the mirror with
  ``b -> a`` kept). The host cycle grows by two, so no new 2-cycle appears.
* :func:`resolve_without_pairs` (dense shards) forbids one gift of each
  2-cycle and solves the assignment again, a few rounds; the cheaper of its
  answer and the splicing's is kept.
* :func:`join_cycles` merges the smallest cycle with another by a 2-exchange:
  ``a -> a'`` in it and ``b -> b'`` elsewhere become ``a -> b'`` and
  ``b -> a'`` (Karp's patching), until one cycle is left.

Both are local heuristics (the exact problems are NP-hard: a Hamiltonian
cycle, and a cycle cover without 2-cycles in a digraph); they report failure
instead of returning something invalid.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from northpole.exchange.candidates import Graph

IntArray = npt.NDArray[np.int64]


def _in_of(graph: Graph, r: int) -> IntArray:
    """Return the givers that may give to ``r``."""
    if graph.matrix_allowed is not None:
        return np.flatnonzero(graph.matrix_allowed[:, r]).astype(np.int64)
    indptr, givers = graph.csc()
    return givers[indptr[r] : indptr[r + 1]]


def _best(delta: IntArray, gen: np.random.Generator) -> int:
    """Return the position of a least ``delta``, at random among ties."""
    ties = np.flatnonzero(delta == delta.min())
    return int(ties[gen.integers(ties.size)])


def _splice_options(
    graph: Graph, succ: IntArray, keep_from: int, keep_to: int
) -> tuple[IntArray, IntArray, IntArray]:
    """Hosts ``x -> y`` for splicing ``keep_from -> keep_to`` in, and the added cost."""
    xs = _in_of(graph, keep_from)
    xs = xs[(xs != keep_from) & (xs != keep_to)]
    ys = succ[xs]
    ok_xa, c_xa = graph.lookup(xs, np.full(xs.size, keep_from, dtype=np.int64))
    ok_by, c_by = graph.lookup(np.full(xs.size, keep_to, dtype=np.int64), ys)
    ok = ok_xa & ok_by
    xs, ys = xs[ok], ys[ok]
    _, c_xy = graph.lookup(xs, ys)
    _, c_ba = graph.lookup(np.array([keep_to]), np.array([keep_from]))
    delta = c_xa[ok] + c_by[ok] - c_xy - int(c_ba[0])
    return xs, ys, delta


def break_two_cycles(graph: Graph, succ: IntArray, gen: np.random.Generator) -> bool:
    """Splice every 2-cycle of ``succ`` (in place) into a longer cycle; False if stuck."""
    n = graph.n
    if n < 3:
        return False
    starts = np.flatnonzero(succ[succ] == np.arange(n))
    for a in starts.tolist():
        b = int(succ[a])
        if int(succ[b]) != a or a > b:
            continue  # already repaired through a host, or seen from its partner
        best: tuple[int, int, int, int, int] | None = None  # delta, x, y, from, to
        for keep_from, keep_to in ((a, b), (b, a)):
            xs, ys, delta = _splice_options(graph, succ, keep_from, keep_to)
            if delta.size:
                i = _best(delta, gen)
                option = (int(delta[i]), int(xs[i]), int(ys[i]), keep_from, keep_to)
                if (
                    best is None
                    or option[0] < best[0]
                    or (option[0] == best[0] and gen.integers(2))
                ):
                    best = option
        if best is None:
            return False
        _, x, y, keep_from, keep_to = best
        succ[x], succ[keep_to] = keep_from, y
    return True


def resolve_without_pairs(
    graph: Graph,
    succ: IntArray,
    solve: Callable[[Graph], IntArray | None],
    gen: np.random.Generator,
    rounds: int,
) -> IntArray | None:
    """Forbid one gift of each 2-cycle and solve again, up to ``rounds`` times.

    Dense graphs only. Returns a permutation without 2-cycles (valid for the
    original graph, whose edges it only removes), or ``None``.
    """
    if graph.matrix_allowed is None:
        return None
    allowed = graph.matrix_allowed.copy()
    current = succ
    for _ in range(rounds):
        starts = np.flatnonzero(current[current] == np.arange(graph.n))
        if not starts.size:
            return current
        a = starts[starts < current[starts]]
        b = current[a]
        flip = gen.random(a.size) < 0.5
        allowed[np.where(flip, a, b), np.where(flip, b, a)] = False
        narrowed = replace(graph, matrix_allowed=allowed, _csc=None, _codes=None)
        nxt = solve(narrowed)
        if nxt is None:
            return None
        current = nxt
    return current if not (current[current] == np.arange(graph.n)).any() else None


def cycle_labels(succ: IntArray) -> tuple[IntArray, list[IntArray]]:
    """Return each node's cycle number and the members of each cycle."""
    n = succ.size
    label = np.full(n, -1, dtype=np.int64)
    members: list[IntArray] = []
    for start in range(n):
        if label[start] >= 0:
            continue
        nodes = [start]
        label[start] = len(members)
        x = int(succ[start])
        while x != start:
            label[x] = len(members)
            nodes.append(x)
            x = int(succ[x])
        members.append(np.asarray(nodes, dtype=np.int64))
    return label, members


def _merge_options(
    graph: Graph, succ: IntArray, pred: IntArray, label: IntArray, cyc: IntArray
) -> tuple[IntArray, IntArray, IntArray]:
    """All 2-exchanges joining cycle ``cyc`` (its nodes) to another: ``(a, b, delta)``."""
    a, b_next = graph.out_many(cyc)
    away = label[b_next] != label[cyc[0]]
    a, b_next = a[away], b_next[away]
    b = pred[b_next]
    a_next = succ[a]
    ok, c_ba = graph.lookup(b, a_next)
    a, b, b_next, a_next, c_ba = a[ok], b[ok], b_next[ok], a_next[ok], c_ba[ok]
    _, c_ab = graph.lookup(a, b_next)
    _, c_aa = graph.lookup(a, a_next)
    _, c_bb = graph.lookup(b, b_next)
    return a, b, c_ab + c_ba - c_aa - c_bb


def join_cycles(graph: Graph, succ: IntArray, gen: np.random.Generator) -> bool:
    """Merge the cycles of ``succ`` (in place) into one; False if stuck."""
    label, members = cycle_labels(succ)
    alive = {i: m for i, m in enumerate(members)}
    heap = [(m.size, int(gen.integers(1 << 30)), i) for i, m in alive.items()]
    heapq.heapify(heap)
    pred = np.empty_like(succ)
    pred[succ] = np.arange(succ.size, dtype=np.int64)
    stuck: list[tuple[int, int, int]] = []
    while len(alive) > 1:
        if not heap:
            return False  # every remaining cycle was tried since the last merge
        size, _, cid = heapq.heappop(heap)
        if cid not in alive or alive[cid].size != size:
            continue
        a, b, delta = _merge_options(graph, succ, pred, label, alive[cid])
        if not delta.size:
            stuck.append((size, int(gen.integers(1 << 30)), cid))
            continue
        i = _best(delta, gen)
        ai, bi = int(a[i]), int(b[i])
        a_next, b_next = int(succ[ai]), int(succ[bi])
        succ[ai], succ[bi] = b_next, a_next
        pred[b_next], pred[a_next] = ai, bi
        other = int(label[bi])
        small, big = sorted((cid, other), key=lambda c: alive[c].size)
        label[alive[small]] = big
        alive[big] = np.concatenate((alive[big], alive.pop(small)))
        heapq.heappush(heap, (alive[big].size, int(gen.integers(1 << 30)), big))
        for item in stuck:  # a merge changes the options of the others
            heapq.heappush(heap, item)
        stuck.clear()
    return True
