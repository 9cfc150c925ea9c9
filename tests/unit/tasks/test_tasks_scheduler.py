"""Unit tests for northpole.tasks.scheduler: partitions, aging, consumer groups, autoscaling."""

from __future__ import annotations

import graphlib
import hashlib
import heapq
import itertools
import json
import math
import os
import random
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from northpole.tasks.scheduler import (
    assign_partitions,
    desired_workers,
    find_cycle,
    partition_of,
    schedule_key,
    steal_order,
)

GIFT_IDS = [0, 1, 42, 4096, 7_000_001, 2**40 + 12_345, 2**62, 2**63 - 1]
MAX_GIFT_ID = 2**63 - 1


def crc_partition(gift_id: int, partitions: int) -> int:
    """Compute the documented partition: crc32 of the id as 8 big-endian bytes, mod partitions."""
    return zlib.crc32(gift_id.to_bytes(8, "big")) % partitions


def snowflake_ids(count: int, seed: int) -> list[int]:
    """Return ``count`` distinct Gift-ID-shaped ids: 41-bit time, 10-bit workshop, 12-bit seq."""
    rng = random.Random(seed)
    ids: set[int] = set()
    while len(ids) < count:
        ms = 1_700_000_000_000 - 1_600_000_000_000 + rng.randrange(10**9)
        ids.add((ms << 22) | (rng.randrange(1024) << 12) | rng.randrange(4096))
    return sorted(ids)


def chi_square(counts: Counter[int], buckets: int, total: int) -> float:
    """Return Pearson's chi-square statistic of ``counts`` against a uniform spread."""
    expected = total / buckets
    return sum((counts.get(b, 0) - expected) ** 2 / expected for b in range(buckets))


# -- partition_of -----------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 7, 10, 64, 256, 1024])
@pytest.mark.parametrize("gift_id", GIFT_IDS)
def test_partition_of_matches_crc32(gift_id: int, partitions: int) -> None:
    """partition_of equals crc32(8 big-endian bytes) % partitions computed here with zlib."""
    assert partition_of(gift_id, partitions) == crc_partition(gift_id, partitions)


def test_partition_of_known_values() -> None:
    """A few pinned values, so a change of the hash or byte layout is caught."""
    assert [partition_of(g, 64) for g in (0, 1, 42, 2**62, MAX_GIFT_ID)] == [41, 63, 63, 4, 6]
    assert zlib.crc32((42).to_bytes(8, "big")) % 64 == 63


def test_partition_of_is_independent_of_pythonhashseed() -> None:
    """A process with another PYTHONHASHSEED computes the same partitions."""
    code = (
        "import json; from northpole.tasks.scheduler import partition_of; "
        f"print(json.dumps([partition_of(g, p) for g in {GIFT_IDS!r} for p in (7, 64, 1024)]))"
    )
    here = [partition_of(g, p) for g in GIFT_IDS for p in (7, 64, 1024)]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == here


@settings(max_examples=300)
@given(gift_id=st.integers(0, MAX_GIFT_ID), partitions=st.integers(1, 100_000))
def test_partition_of_is_in_range_and_stable(gift_id: int, partitions: int) -> None:
    """The partition is in [0, partitions) and the same on every call."""
    p = partition_of(gift_id, partitions)
    assert 0 <= p < partitions
    assert partition_of(gift_id, partitions) == p == crc_partition(gift_id, partitions)


@pytest.mark.parametrize("partitions", [10, 64, 97])
@pytest.mark.parametrize("kind", ["snowflake", "sequential"])
def test_partition_of_is_roughly_uniform(partitions: int, kind: str) -> None:
    """100k ids spread over the partitions with a chi-square well inside a loose bound."""
    total = 100_000
    ids: Sequence[int] = (
        snowflake_ids(total, seed=partitions)
        if kind == "snowflake"
        else range(10**12, 10**12 + total)
    )
    counts = Counter(partition_of(g, partitions) for g in ids)
    dof = partitions - 1
    assert chi_square(counts, partitions, total) < dof + 6 * math.sqrt(2 * dof)
    assert min(counts.values()) > 0.8 * total / partitions


# -- schedule_key -----------------------------------------------------------------------


def test_schedule_key_orders_by_priority_then_age() -> None:
    """Higher priority first; at equal priority, older first; age only matters at aging scale."""
    tasks = [(0, 1_000), (10, 1_000), (5, 1_000), (5, 900), (5, 1_100), (-3, 1_000)]
    ordered = sorted(tasks, key=lambda t: schedule_key(t[0], t[1], aging_ms=60_000))
    assert ordered == [(10, 1_000), (5, 900), (5, 1_000), (5, 1_100), (0, 1_000), (-3, 1_000)]
    # With aging_ms=1, 100 ms of waiting is worth 100 priority levels.
    aged = sorted([(10, 1_000), (5, 900)], key=lambda t: schedule_key(t[0], t[1], aging_ms=1))
    assert aged == [(5, 900), (10, 1_000)]


def test_schedule_key_value() -> None:
    """The key is available_ms - priority * aging_ms."""
    assert schedule_key(3, 10_000, 1_000) == 7_000
    assert schedule_key(-2, 10_000, 1_000) == 12_000
    assert schedule_key(2**31 - 1, 0, 60_000) == -(2**31 - 1) * 60_000


@given(
    p=st.integers(-(2**31), 2**31 - 1),
    q=st.integers(-(2**31), 2**31 - 1),
    t=st.integers(0, 2**42),
    later=st.integers(1, 2**40),
    aging=st.integers(1, 10**6),
)
def test_aging_bound_from_the_docstring(p: int, q: int, t: int, later: int, aging: int) -> None:
    """A priority-p task queued at t precedes any priority q > p task queued after t+(q-p)*A."""
    assume(q > p)
    other_time = t + (q - p) * aging + later
    assert schedule_key(p, t, aging) < schedule_key(q, other_time, aging)


def simulate_starvation(aging_ms: int, per_ms: int, horizon_ms: int) -> int | None:
    """Return when a priority-0 task queued at 0 is claimed under a flood of priority-10 tasks.

    Every ms ``per_ms`` priority-10 tasks arrive and workers claim ``per_ms`` tasks (the queue
    keeps up with the flood, so the bound is not about draining a backlog).
    """
    heap: list[tuple[int, int, str]] = [(schedule_key(0, 0, aging_ms), 0, "low")]
    seq = 1
    for now in range(horizon_ms):
        for _ in range(per_ms):
            heapq.heappush(heap, (schedule_key(10, now, aging_ms), seq, "high"))
            seq += 1
        for _ in range(per_ms):
            if heapq.heappop(heap)[2] == "low":
                return now
    return None


@pytest.mark.parametrize("aging_ms", [1, 5, 20, 100, 250])
@pytest.mark.parametrize("per_ms", [1, 3])
def test_low_priority_task_is_not_starved(aging_ms: int, per_ms: int) -> None:
    """Under a constant flood of priority-10 tasks, a priority-0 task is claimed by ~10*aging_ms."""
    claimed = simulate_starvation(aging_ms, per_ms, horizon_ms=10 * aging_ms + 100)
    assert claimed is not None
    assert 10 * aging_ms - 1 <= claimed <= 10 * aging_ms + 2


def test_without_aging_a_flood_starves_low_priority() -> None:
    """With aging too slow to matter, the same flood never lets the low-priority task through."""
    assert simulate_starvation(aging_ms=10**9, per_ms=1, horizon_ms=5_000) is None


# -- assign_partitions ------------------------------------------------------------------

WORKER_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.:_", min_size=1, max_size=24)
MEMBER_SETS = st.sets(WORKER_NAMES, min_size=1, max_size=10)


def owners(assignment: dict[str, list[int]]) -> dict[int, str]:
    """Invert an assignment into partition -> worker, asserting no partition is given twice."""
    out: dict[int, str] = {}
    for worker, parts in assignment.items():
        for p in parts:
            assert p not in out, f"partition {p} given to {out[p]} and {worker}"
            out[p] = worker
    return out


@settings(max_examples=150, deadline=None)
@given(members=MEMBER_SETS, partitions=st.integers(0, 200))
def test_every_partition_goes_to_exactly_one_worker(members: set[str], partitions: int) -> None:
    """Each partition has exactly one owner, every member is listed, each list ascending."""
    assignment = assign_partitions(partitions, members)
    assert set(assignment) == members
    assert sorted(owners(assignment)) == list(range(partitions))
    assert all(parts == sorted(parts) for parts in assignment.values())


@settings(max_examples=100, deadline=None)
@given(members=MEMBER_SETS, partitions=st.integers(1, 128), seed=st.integers(0, 1000))
def test_assignment_is_deterministic_and_order_independent(
    members: set[str], partitions: int, seed: int
) -> None:
    """Any order of the member list, with duplicates, gives the same assignment."""
    listed = sorted(members)
    shuffled = [*listed, *listed[:2]]
    random.Random(seed).shuffle(shuffled)
    assert assign_partitions(partitions, shuffled) == assign_partitions(partitions, listed)
    assert assign_partitions(partitions, iter(listed)) == assign_partitions(partitions, listed)


def test_assignment_for_known_members_is_pinned() -> None:
    """Every process computes the same answer: pinned owners for four workers."""
    assignment = assign_partitions(8, ["worker-0", "worker-1", "worker-2", "worker-3"])
    expected_owner = {
        p: max(
            ["worker-0", "worker-1", "worker-2", "worker-3"],
            key=lambda w, p=p: (
                int.from_bytes(hashlib.blake2b(f"{w}:{p}".encode(), digest_size=8).digest(), "big"),
                w,
            ),
        )
        for p in range(8)
    }
    assert owners(assignment) == expected_owner


@pytest.mark.parametrize(
    "members",
    [
        ["worker-0", "worker-1", "worker-2", "worker-3"],
        ["elf-1.workshop.np", "elf-2.workshop.np", "elf-3.workshop.np", "elf-4.workshop.np"],
    ],
)
def test_assignment_is_balanced_for_four_workers(members: list[str]) -> None:
    """With 64 partitions and 4 workers no worker gets more than twice the mean (16)."""
    counts = [len(parts) for parts in assign_partitions(64, members).values()]
    assert sum(counts) == 64
    assert max(counts) <= 2 * 64 / 4


@settings(max_examples=150, deadline=None)
@given(members=st.sets(WORKER_NAMES, min_size=2, max_size=10), data=st.data())
def test_only_the_leavers_partitions_move(members: set[str], data: st.DataObject) -> None:
    """When a worker leaves, exactly its partitions move; everyone else keeps theirs."""
    leaver = data.draw(st.sampled_from(sorted(members)))
    partitions = data.draw(st.integers(1, 128))
    before = owners(assign_partitions(partitions, members))
    after = owners(assign_partitions(partitions, members - {leaver}))
    moved = {p for p in range(partitions) if before[p] != after[p]}
    assert moved == {p for p, w in before.items() if w == leaver}
    assert leaver not in after.values()


@settings(max_examples=150, deadline=None)
@given(members=MEMBER_SETS, joiner=WORKER_NAMES, partitions=st.integers(1, 128))
def test_a_joiner_only_takes_partitions(members: set[str], joiner: str, partitions: int) -> None:
    """When a worker joins, every partition that moves moves to the new worker."""
    assume(joiner not in members)
    before = owners(assign_partitions(partitions, members))
    after = owners(assign_partitions(partitions, members | {joiner}))
    assert all(after[p] == joiner for p in range(partitions) if before[p] != after[p])


def test_no_workers_gives_an_empty_assignment() -> None:
    """With no workers there is nobody to own anything."""
    assert assign_partitions(64, []) == {}
    assert assign_partitions(0, []) == {}


def test_zero_partitions_gives_every_worker_nothing() -> None:
    """With no partitions every worker is listed with an empty list."""
    assert assign_partitions(0, ["a", "b"]) == {"a": [], "b": []}


def test_single_worker_owns_everything() -> None:
    """A lone worker owns every partition."""
    assert assign_partitions(5, ["solo"]) == {"solo": [0, 1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("partitions", "members"),
    [
        (1024, [f"worker-{i}" for i in range(5)]),  # worker-4 gets 537 of 1024
        (64, ["a", "b", "c", "d"]),  # c gets 35 of 64
    ],
)
def test_rendezvous_assignment_is_balanced(partitions: int, members: list[str]) -> None:
    """No worker of a group gets more than twice its fair share of partitions."""
    counts = [len(parts) for parts in assign_partitions(partitions, members).values()]
    assert max(counts) <= 2 * partitions / len(members)


# -- steal_order ------------------------------------------------------------------------


def test_steal_order_deepest_first_ties_by_partition() -> None:
    """Other partitions with work come deepest first; equal depths by partition number."""
    depths = {0: 5, 1: 0, 2: 9, 3: 5, 4: 100, 5: 9, 6: 1, 7: 50}
    assert steal_order(depths, own=[4, 6]) == [7, 2, 5, 0, 3]


def test_steal_order_with_nothing_to_steal() -> None:
    """No other partition with work gives an empty list."""
    assert steal_order({0: 3, 1: 0, 2: 0}, own=[0]) == []
    assert steal_order({}, own=[]) == []
    assert steal_order({0: -1}, own=[]) == []


@given(
    depths=st.dictionaries(st.integers(0, 200), st.integers(-5, 1_000), max_size=60),
    own=st.lists(st.integers(0, 200), max_size=30),
)
def test_steal_order_properties(depths: dict[int, int], own: list[int]) -> None:
    """Exactly the non-own partitions with depth > 0, sorted by (-depth, partition)."""
    order = steal_order(depths, own)
    assert set(order) == {p for p, d in depths.items() if d > 0 and p not in own}
    assert len(order) == len(set(order))
    keys = [(-depths[p], p) for p in order]
    assert keys == sorted(keys)


# -- desired_workers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"depth": 0, "avg_processing_s": 5.0, "concurrency": 1, "target_drain_s": 1.0}, 0),
        (
            {
                "depth": 0,
                "avg_processing_s": 5.0,
                "concurrency": 1,
                "target_drain_s": 1.0,
                "minimum": 2,
            },
            2,
        ),
        ({"depth": 100, "avg_processing_s": 2.0, "concurrency": 4, "target_drain_s": 10.0}, 5),
        ({"depth": 101, "avg_processing_s": 2.0, "concurrency": 4, "target_drain_s": 10.0}, 6),
        ({"depth": 1_000, "avg_processing_s": 0.5, "concurrency": 10, "target_drain_s": 25}, 2),
        ({"depth": 1, "avg_processing_s": 0.001, "concurrency": 8, "target_drain_s": 60.0}, 1),
        ({"depth": 5, "avg_processing_s": 0.0, "concurrency": 1, "target_drain_s": 1.0}, 1),
        (
            {
                "depth": 10**6,
                "avg_processing_s": 1.0,
                "concurrency": 1,
                "target_drain_s": 1.0,
                "maximum": 50,
            },
            50,
        ),
        (
            {
                "depth": 10,
                "avg_processing_s": 1.0,
                "concurrency": 10,
                "target_drain_s": 100.0,
                "minimum": 3,
            },
            3,
        ),
        ({"depth": 10**7, "avg_processing_s": 1.0, "concurrency": 1, "target_drain_s": 1.0}, 1000),
    ],
)
def test_desired_workers_exact_values(kwargs: dict[str, float], expected: int) -> None:
    """Known inputs give ceil(depth * avg / (concurrency * target)) within [minimum, maximum]."""
    assert desired_workers(**kwargs) == expected  # type: ignore[arg-type]


def test_concurrency_and_target_drain_scale_the_answer() -> None:
    """Doubling concurrency or the drain target halves the workers; halving the target doubles."""
    base = {"depth": 800, "avg_processing_s": 1.0, "concurrency": 4, "target_drain_s": 10.0}
    assert desired_workers(**base) == 20  # type: ignore[arg-type]
    assert desired_workers(**{**base, "concurrency": 8}) == 10  # type: ignore[arg-type]
    assert desired_workers(**{**base, "target_drain_s": 20.0}) == 10  # type: ignore[arg-type]
    assert desired_workers(**{**base, "target_drain_s": 5.0}) == 40  # type: ignore[arg-type]


@settings(max_examples=300)
@given(
    depths=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    avgs=st.tuples(st.floats(0, 100), st.floats(0, 100)),
    concurrency=st.integers(1, 64),
    target=st.floats(0.1, 3_600),
    minimum=st.integers(0, 5),
    maximum=st.integers(5, 500),
)
def test_desired_workers_is_monotone_and_bounded(
    depths: tuple[int, int],
    avgs: tuple[float, float],
    concurrency: int,
    target: float,
    minimum: int,
    maximum: int,
) -> None:
    """More depth or slower tasks never want fewer workers; the answer is in [minimum, maximum]."""
    low_d, high_d = sorted(depths)
    low_a, high_a = sorted(avgs)

    def want(depth: int, avg: float) -> int:
        return desired_workers(
            depth=depth,
            avg_processing_s=avg,
            concurrency=concurrency,
            target_drain_s=target,
            minimum=minimum,
            maximum=maximum,
        )

    for d in (low_d, high_d):
        for a in (low_a, high_a):
            assert minimum <= want(d, a) <= maximum
    assert want(low_d, low_a) <= want(high_d, low_a) <= want(high_d, high_a)
    assert want(low_d, low_a) <= want(low_d, high_a) <= want(high_d, high_a)
    if high_d > 0:
        assert want(high_d, low_a) >= max(minimum, 1)


# -- find_cycle -------------------------------------------------------------------------


def assert_real_cycle(cycle: list[int] | None, edges: dict[int, list[int]]) -> None:
    """Assert ``cycle`` closes on itself and each consecutive pair is an edge within ``edges``."""
    assert cycle is not None
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for a, b in itertools.pairwise(cycle):
        assert a in edges and b in edges
        assert b in edges[a], f"{a} -> {b} is not an edge"


def test_find_cycle_self_loop() -> None:
    """A task depending on itself is a cycle of one."""
    assert find_cycle({5: [5]}) == [5, 5]
    assert find_cycle({1: [], 5: [1, 5]}) == [5, 5]


def test_find_cycle_two_cycle() -> None:
    """Two tasks depending on each other form a cycle."""
    edges = {1: [2], 2: [1]}
    cycle = find_cycle(edges)
    assert_real_cycle(cycle, edges)
    assert cycle in ([1, 2, 1], [2, 1, 2])


def test_find_cycle_long_cycle() -> None:
    """A ring of 500 tasks behind a tail of others is found as the whole ring."""
    ring = {i: [i + 1] for i in range(100, 599)}
    ring[599] = [100]
    tail = {i: [i + 1] for i in range(100)}  # 0 -> 1 -> ... -> 99 -> 100 (into the ring)
    edges = {**tail, **ring}
    cycle = find_cycle(edges)
    assert_real_cycle(cycle, edges)
    assert cycle is not None and sorted(set(cycle)) == list(range(100, 600))


def test_find_cycle_none_for_dags() -> None:
    """Chains, diamonds and empty graphs have no cycle."""
    assert find_cycle({}) is None
    assert find_cycle({1: []}) is None
    assert find_cycle({1: [2, 3], 2: [4], 3: [4], 4: []}) is None
    assert find_cycle({i: list(range(i)) for i in range(60)}) is None


def test_find_cycle_ignores_edges_leaving_the_mapping() -> None:
    """Dependencies on tasks outside the mapping cannot close a cycle."""
    assert find_cycle({1: [2]}) is None
    assert find_cycle({1: [99, 2], 2: [98, 99]}) is None
    edges = {1: [99, 2], 2: [99, 1]}
    assert_real_cycle(find_cycle(edges), edges)


@st.composite
def dags(draw: st.DrawFn) -> dict[int, list[int]]:
    """Draw a DAG: node i depends only on lower ids (plus some ids outside the mapping)."""
    n = draw(st.integers(1, 40))
    edges: dict[int, list[int]] = {}
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=4)) if i else []
        deps += draw(st.lists(st.integers(1_000, 1_010), max_size=1))
        edges[i] = deps
    keys = draw(st.permutations(list(edges)))
    return {k: edges[k] for k in keys}


@settings(max_examples=200, deadline=None)
@given(edges=dags())
def test_random_dags_have_no_cycle(edges: dict[int, list[int]]) -> None:
    """A graph whose edges only point to lower ids has no cycle."""
    assert find_cycle(edges) is None


@settings(max_examples=200, deadline=None)
@given(edges=dags(), data=st.data())
def test_a_back_edge_creates_a_reported_cycle(
    edges: dict[int, list[int]], data: st.DataObject
) -> None:
    """Adding an edge from a node back to one that reaches it makes find_cycle report a cycle."""
    top = data.draw(st.sampled_from(sorted(edges)))
    walk = [top]
    while True:  # follow dependencies down from ``top`` for a while
        inside = [d for d in edges[walk[-1]] if d in edges]
        if not inside or not data.draw(st.booleans()):
            break
        walk.append(data.draw(st.sampled_from(inside)))
    bottom = walk[-1]
    cyclic = {**edges, bottom: [*edges[bottom], top]}
    assert_real_cycle(find_cycle(cyclic), cyclic)


@settings(max_examples=300, deadline=None)
@given(
    edges=st.dictionaries(st.integers(0, 15), st.lists(st.integers(0, 20), max_size=3), max_size=16)
)
def test_find_cycle_agrees_with_graphlib(edges: dict[int, list[int]]) -> None:
    """find_cycle finds a cycle exactly when graphlib's topological sort cannot order the graph."""
    inside = {node: [d for d in deps if d in edges] for node, deps in edges.items()}
    try:
        tuple(graphlib.TopologicalSorter(inside).static_order())
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    cycle = find_cycle(edges)
    if acyclic:
        assert cycle is None
    else:
        assert_real_cycle(cycle, edges)
