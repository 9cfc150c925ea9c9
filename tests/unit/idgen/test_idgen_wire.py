"""ids_json writes exactly what the obvious str()-per-ID serialisation writes."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.core.clock import FakeClock
from northpole.idgen.generator import IdGenerator
from northpole.idgen.snowflake import MAX_ID
from northpole.idgen.wire import ids_json


def _reference(runs: list[range]) -> bytes:
    return orjson.dumps({"ids": [str(i) for run in runs for i in run]})


runs_strategy = st.lists(
    st.tuples(st.integers(0, MAX_ID - 30_000), st.integers(0, 25_000)).map(
        lambda t: range(t[0], t[0] + t[1])
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(runs_strategy)
def test_ids_json_matches_reference_for_any_runs(runs: list[range]) -> None:
    """Any runs of consecutive IDs, across 10,000-blocks and from zero, serialise identically."""
    assert ids_json(runs) == _reference(runs)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20_000), st.integers(1, 12_000))
def test_ids_json_matches_reference_for_small_numbers(start: int, length: int) -> None:
    """Numbers with fewer than five digits (no shared prefix) serialise identically."""
    runs = [range(start, start + length)]
    assert ids_json(runs) == _reference(runs)


def test_ids_json_of_nothing_is_an_empty_list() -> None:
    """No runs, or only empty ones, give an empty ids list."""
    assert ids_json([]) == b'{"ids":[]}'
    assert ids_json([range(5, 5)]) == b'{"ids":[]}'


def test_ids_json_of_a_real_batch_round_trips() -> None:
    """A 10,000-ID batch spanning three milliseconds parses back to the generator's IDs."""
    clock = FakeClock()
    runs = IdGenerator(77, clock=clock).next_runs(10_000)
    assert [len(r) for r in runs] == [4096, 4096, 1808]
    parsed = [int(x) for x in orjson.loads(ids_json(runs))["ids"]]
    assert parsed == [i for run in runs for i in run]
    assert parsed == sorted(set(parsed))
