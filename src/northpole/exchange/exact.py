"""Exact solves of small shards: minimum cost, and a uniform draw among the optimal.

Dynamic programmes over subsets count, for every partial state, how many
completions reach the least cost (Python integers, so counts are exact). A
draw then walks the programme from the start, picking each step with
probability proportional to the number of optimal completions behind it, so
every optimal matching is equally likely. With no soft preferences every
valid matching costs the same, so the draw is uniform over all valid ones.

* plain: gifts form any permutation without fixed points; state = the set of
  receivers used by givers ``0..k-1`` (``O(2^n n)``).
* cycles: ``cyc[S]`` is the best directed cycle through exactly the people in
  ``S`` (paths from ``min(S)``, ``O(2^n n^2)``); ``single_cycle`` takes
  ``cyc[everybody]``, and ``no_reciprocal`` splits everybody into cycles of
  length 3 or more (``O(3^n)``).

Used up to :data:`EXACT_MAX` people per shard.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

#: Largest shard solved exactly (with a uniform draw among the optimal).
EXACT_MAX = 12

_INF = 1 << 62

Matrix = Sequence[Sequence[int | None]]  # cost, or None where the gift is not allowed


@dataclass(frozen=True, slots=True)
class ExactResult:
    """The least cost, how many valid matchings reach it, and one drawn uniformly."""

    cost: int
    count: int
    succ: tuple[int, ...]


def _pick(rng: random.Random, options: list[tuple[int, int]]) -> int:
    """Return an option's value, chosen with probability proportional to its weight."""
    total = sum(w for _, w in options)
    x = rng.randrange(total)
    for value, weight in options:
        x -= weight
        if x < 0:
            return value
    raise AssertionError("weights changed while picking")  # pragma: no cover


def _plain(cost: Matrix, rng: random.Random) -> ExactResult | None:
    n = len(cost)
    full = (1 << n) - 1
    best = [_INF] * (1 << n)
    count = [0] * (1 << n)
    best[full], count[full] = 0, 1
    for mask in range(full - 1, -1, -1):
        k = mask.bit_count()
        row = cost[k]
        b, c = _INF, 0
        for r in range(n):
            w = row[r]
            bit = 1 << r
            if w is None or mask & bit or best[mask | bit] >= _INF:
                continue
            v = w + best[mask | bit]
            if v < b:
                b, c = v, count[mask | bit]
            elif v == b:
                c += count[mask | bit]
        best[mask], count[mask] = b, c
    if best[0] >= _INF:
        return None
    succ = [0] * n
    mask = 0
    for k in range(n):
        row = cost[k]
        options = [
            (r, count[mask | 1 << r])
            for r in range(n)
            if row[r] is not None
            and not mask & 1 << r
            and best[mask | 1 << r] < _INF
            and row[r] + best[mask | 1 << r] == best[mask]  # type: ignore[operator]
        ]
        succ[k] = _pick(rng, options)
        mask |= 1 << succ[k]
    return ExactResult(best[0], count[0], tuple(succ))


class _Cycles:
    """Best directed cycles through every subset (paths start at the subset's minimum)."""

    def __init__(self, cost: Matrix, min_len: int) -> None:
        n = self.n = len(cost)
        self.cost = cost
        size = (1 << n) * n
        self.pb = [_INF] * size
        self.pc = [0] * size
        self.cb = [_INF] * (1 << n)
        self.cc = [0] * (1 << n)
        for s in range(n):
            self.pb[(1 << s) * n + s], self.pc[(1 << s) * n + s] = 0, 1
        for mask in range(1, 1 << n):
            self._extend(mask)
            self._close(mask, min_len)

    def _extend(self, mask: int) -> None:
        n, pb, pc = self.n, self.pb, self.pc
        s = (mask & -mask).bit_length() - 1
        for v in range(s, n):
            i = mask * n + v
            if pb[i] >= _INF:
                continue
            row = self.cost[v]
            for u in range(s + 1, n):
                w = row[u]
                if w is None or mask >> u & 1:
                    continue
                j = (mask | 1 << u) * n + u
                val = pb[i] + w
                if val < pb[j]:
                    pb[j], pc[j] = val, pc[i]
                elif val == pb[j]:
                    pc[j] += pc[i]

    def _close(self, mask: int, min_len: int) -> None:
        if mask.bit_count() < min_len:
            return
        n = self.n
        s = (mask & -mask).bit_length() - 1
        b, c = _INF, 0
        for v in range(s + 1, n):
            w = self.cost[v][s]
            i = mask * n + v
            if w is None or self.pb[i] >= _INF:
                continue
            val = self.pb[i] + w
            if val < b:
                b, c = val, self.pc[i]
            elif val == b:
                c += self.pc[i]
        self.cb[mask], self.cc[mask] = b, c

    def draw(self, mask: int, rng: random.Random, succ: list[int]) -> None:
        """Draw one optimal cycle through ``mask`` uniformly and write it into ``succ``."""
        n, s = self.n, (mask & -mask).bit_length() - 1
        target = self.cb[mask]
        options = []
        for v in range(s + 1, n):
            w = self.cost[v][s]
            i = mask * n + v
            if w is not None and self.pb[i] < _INF and self.pb[i] + w == target:
                options.append((v, self.pc[i]))
        v = _pick(rng, options)
        succ[v] = s
        while v != s:
            i = mask * n + v
            prev_mask = mask & ~(1 << v)
            options = []
            for u in range(n):
                w = self.cost[u][v]
                j = prev_mask * n + u
                if w is not None and prev_mask >> u & 1 and self.pb[j] + w == self.pb[i]:
                    options.append((u, self.pc[j]))
            u = _pick(rng, options)
            succ[u] = v
            mask, v = prev_mask, u


def _single_cycle(cost: Matrix, min_len: int, rng: random.Random) -> ExactResult | None:
    n = len(cost)
    if n < min_len:
        return None
    cyc = _Cycles(cost, min_len)
    full = (1 << n) - 1
    if cyc.cb[full] >= _INF:
        return None
    succ = [0] * n
    cyc.draw(full, rng, succ)
    return ExactResult(cyc.cb[full], cyc.cc[full], tuple(succ))


def _splits(mask: int) -> list[tuple[int, int]]:
    """Return every ``(part, rest)`` with ``part`` holding ``mask``'s lowest member."""
    low = mask & -mask
    others = mask ^ low
    out = []
    sub = others
    while True:
        out.append((sub | low, others ^ sub))
        if sub == 0:
            return out
        sub = (sub - 1) & others


def _cycle_cover(cost: Matrix, min_len: int, rng: random.Random) -> ExactResult | None:
    n = len(cost)
    cyc = _Cycles(cost, min_len)
    full = (1 << n) - 1
    gb = [_INF] * (1 << n)
    gc = [0] * (1 << n)
    gb[0], gc[0] = 0, 1
    for mask in range(1, full + 1):
        b, c = _INF, 0
        for part, other in _splits(mask):
            if cyc.cb[part] >= _INF or gb[other] >= _INF:
                continue
            val = cyc.cb[part] + gb[other]
            if val < b:
                b, c = val, cyc.cc[part] * gc[other]
            elif val == b:
                c += cyc.cc[part] * gc[other]
        gb[mask], gc[mask] = b, c
    if gb[full] >= _INF:
        return None
    succ = [0] * n
    mask = full
    while mask:
        options = [
            (part, cyc.cc[part] * gc[other])
            for part, other in _splits(mask)
            if cyc.cb[part] < _INF and cyc.cb[part] + gb[other] == gb[mask]
        ]
        part = _pick(rng, options)
        cyc.draw(part, rng, succ)
        mask ^= part
    return ExactResult(gb[full], gc[full], tuple(succ))


def solve_exact(
    cost: Matrix, *, no_reciprocal: bool, single_cycle: bool, rng: random.Random
) -> ExactResult | None:
    """Return the least cost, its number of matchings and a uniform draw; None if none.

    Args:
        cost: ``cost[g][r]``, or ``None`` where ``g -> r`` is not allowed (the
            diagonal must be ``None``).
        no_reciprocal: Forbid 2-cycles.
        single_cycle: Require one cycle through everybody.
        rng: The only source of randomness of the draw.
    """
    if len(cost) > EXACT_MAX + 6:
        raise ValueError(f"solve_exact is for small shards, not {len(cost)} people")
    min_len = 3 if no_reciprocal else 2
    if single_cycle:
        return _single_cycle(cost, min_len, rng)
    if no_reciprocal:
        return _cycle_cover(cost, min_len, rng)
    return _plain(cost, rng)
