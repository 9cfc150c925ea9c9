"""Unit tests for northpole.idgen.generator.IdGenerator, driven by a FakeClock."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.core.clock import FakeClock
from northpole.core.errors import (
    ClockMovedBackwards,
    ConfigurationError,
    InvalidInput,
    Unavailable,
)
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen.generator import IdGenerator
from northpole.idgen.snowflake import MAX_ID, MAX_TIMESTAMP, decode
from northpole.idgen.watermark import FileWatermark, MemoryWatermark, Watermark

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, FakeClock's default start.

Op = tuple[str, int]

ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(min_value=-20, max_value=20)),
        st.tuples(st.just("id"), st.just(0)),
        st.tuples(st.just("ids"), st.integers(min_value=1, max_value=5000)),
    ),
    max_size=40,
)


class HookRecorder:
    """Records every on_clock_backwards call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, behind: int, refused: bool) -> None:
        self.calls.append((behind, refused))


def _sequences_by_ms(ids: list[int]) -> dict[int, list[int]]:
    """Group decoded sequences by their unix millisecond, keeping order."""
    grouped: dict[int, list[int]] = defaultdict(list)
    for gift_id in ids:
        d = decode(gift_id)
        grouped[d.unix_ms].append(d.sequence)
    return dict(grouped)


def _assert_strictly_increasing(ids: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids))


# -- monotonicity properties ------------------------------------------------


def _run_ops(gen: IdGenerator, clock: FakeClock, ops: list[Op]) -> tuple[list[int], int]:
    """Apply ops, checking refusals against behind_ms; return emitted IDs and refusal count."""
    emitted: list[int] = []
    refusals = 0
    for kind, arg in ops:
        if kind == "advance":
            clock.advance(arg)
            continue
        behind = gen.behind_ms()
        try:
            batch = [gen.next_id()] if kind == "id" else gen.next_ids(arg)
        except ClockMovedBackwards as exc:
            assert behind > gen.clock_tolerance_ms
            assert exc.behind_ms == behind
            refusals += 1
            continue
        assert behind <= gen.clock_tolerance_ms
        assert len(batch) == (1 if kind == "id" else arg)
        # An ID is never stamped later than the clock at the moment it is returned.
        assert decode(batch[-1]).unix_ms <= clock.now_ms()
        emitted.extend(batch)
    return emitted, refusals


@settings(max_examples=150, deadline=None)
@given(ops=ops_st, workshop=st.integers(min_value=0, max_value=1023))
def test_ids_strictly_increase_when_nothing_is_refused(ops: list[Op], workshop: int) -> None:
    """With a huge tolerance, mixed next_id/next_ids calls under clock jitter never refuse and
    always emit strictly increasing IDs of the generator's workshop."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(workshop, clock=clock, clock_tolerance_ms=10**9, on_clock_backwards=hook)
    emitted, refusals = _run_ops(gen, clock, ops)
    assert refusals == 0
    assert all(not refused for _, refused in hook.calls)
    _assert_strictly_increasing(emitted)
    assert all(decode(i).workshop_id == workshop for i in emitted)
    assert all(0 <= i <= MAX_ID for i in emitted)


@settings(max_examples=150, deadline=None)
@given(
    ops=ops_st,
    workshop=st.integers(min_value=0, max_value=1023),
    tolerance=st.integers(min_value=0, max_value=15),
)
def test_refusals_emit_nothing_and_ids_stay_increasing(
    ops: list[Op], workshop: int, tolerance: int
) -> None:
    """With a small tolerance, a call is refused exactly when the clock is too far behind, a
    refused call emits no ID, and all emitted IDs stay strictly increasing and unique."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(workshop, clock=clock, clock_tolerance_ms=tolerance, on_clock_backwards=hook)
    emitted, refusals = _run_ops(gen, clock, ops)
    assert sum(1 for _, refused in hook.calls if refused) == refusals
    assert all((behind > tolerance) == refused for behind, refused in hook.calls)
    _assert_strictly_increasing(emitted)
    assert len(set(emitted)) == len(emitted)
    assert all(decode(i).workshop_id == workshop for i in emitted)


def test_ids_decode_to_workshop_and_clock_time() -> None:
    """An ID decodes to the generator's workshop id, the clock's millisecond and sequence 0."""
    clock = FakeClock()
    gen = IdGenerator(77, clock=clock)
    d = decode(gen.next_id())
    assert (d.unix_ms, d.workshop_id, d.sequence) == (START_MS, 77, 0)


def test_custom_epoch_is_used_for_encoding() -> None:
    """IDs are stamped relative to the generator's epoch_ms."""
    clock = FakeClock(start_ms=10_000)
    gen = IdGenerator(5, clock=clock, epoch_ms=1_000)
    d = decode(gen.next_id(), epoch_ms=1_000)
    assert (d.unix_ms, d.workshop_id, d.sequence) == (10_000, 5, 0)


# -- sequence exhaustion ----------------------------------------------------


def test_sequence_exhaustion_waits_for_next_millisecond() -> None:
    """On a frozen clock 4096 next_id calls share one millisecond and the 4097th waits for the
    next millisecond with sequence 0."""
    clock = FakeClock()
    gen = IdGenerator(9, clock=clock)
    ids = [gen.next_id() for _ in range(4096)]
    assert _sequences_by_ms(ids) == {START_MS: list(range(4096))}
    assert clock.sleeps == []
    nxt = gen.next_id()
    assert clock.sleeps == [1]
    d = decode(nxt)
    assert (d.unix_ms, d.sequence) == (START_MS + 1, 0)
    assert nxt > ids[-1]


def test_next_ids_spans_milliseconds_on_frozen_clock() -> None:
    """next_ids(10000) on a frozen clock spans 3 ms with sequences 0..4095, 0..4095, 0..1807."""
    clock = FakeClock()
    gen = IdGenerator(9, clock=clock)
    ids = gen.next_ids(10_000)
    assert len(ids) == 10_000
    _assert_strictly_increasing(ids)
    assert _sequences_by_ms(ids) == {
        START_MS: list(range(4096)),
        START_MS + 1: list(range(4096)),
        START_MS + 2: list(range(1808)),
    }
    assert clock.sleeps == [1, 1]


def test_next_ids_continues_the_current_millisecond() -> None:
    """next_ids after some next_id calls continues the same millisecond's sequence."""
    clock = FakeClock()
    gen = IdGenerator(9, clock=clock)
    first = [gen.next_id() for _ in range(3)]
    batch = gen.next_ids(5)
    assert _sequences_by_ms(first + batch) == {START_MS: list(range(8))}


# -- clock moving backwards -------------------------------------------------


@pytest.mark.parametrize("behind", [1, 7, 10])
def test_backwards_within_tolerance_is_waited_out(behind: int) -> None:
    """A backwards jump of at most the default 10 ms tolerance is slept through, not refused."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(1, clock=clock, on_clock_backwards=hook)
    clock.advance(50)
    before = gen.next_id()
    clock.advance(-behind)
    after = gen.next_id()
    assert after > before
    assert clock.sleeps == [behind]
    assert hook.calls == [(behind, False)]


def test_backwards_within_tolerance_is_waited_out_by_next_ids() -> None:
    """next_ids also waits out a backwards jump within tolerance and keeps increasing."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(1, clock=clock, on_clock_backwards=hook)
    before = gen.next_ids(3)
    clock.advance(-5)
    after = gen.next_ids(3)
    _assert_strictly_increasing(before + after)
    assert clock.sleeps == [5]
    assert hook.calls == [(5, False)]


@pytest.mark.parametrize("call", ["next_id", "next_ids"])
def test_backwards_beyond_tolerance_is_refused_then_resumes(call: str) -> None:
    """A backwards jump past the tolerance raises ClockMovedBackwards with behind_ms, calls the
    hook with refused=True, and generation resumes once the clock catches up."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(1, clock=clock, on_clock_backwards=hook)
    issue: Callable[[], list[int]] = (
        (lambda: [gen.next_id()]) if call == "next_id" else (lambda: gen.next_ids(4))
    )
    old = issue()
    clock.advance(-11)
    with pytest.raises(ClockMovedBackwards) as info:
        issue()
    assert info.value.behind_ms == 11
    assert info.value.tolerance_ms == 10
    assert info.value.retry_after_s == pytest.approx(0.011)
    assert hook.calls == [(11, True)]
    assert clock.sleeps == []
    assert gen.behind_ms() == 11
    clock.advance(11)
    assert gen.behind_ms() == 0
    new = issue()
    _assert_strictly_increasing(old + new)


def test_hook_sees_both_waited_and_refused_jumps() -> None:
    """on_clock_backwards is called with (behind, False) for waited jumps and (behind, True)
    for refused ones, in order."""
    clock = FakeClock()
    hook = HookRecorder()
    gen = IdGenerator(1, clock=clock, on_clock_backwards=hook)
    ids = [gen.next_id()]
    clock.advance(-3)
    ids.append(gen.next_id())
    clock.advance(-500)
    with pytest.raises(ClockMovedBackwards):
        gen.next_id()
    clock.advance(501)
    ids.append(gen.next_id())
    assert hook.calls == [(3, False), (500, True)]
    _assert_strictly_increasing(ids)


def test_zero_tolerance_refuses_any_backwards_jump() -> None:
    """With clock_tolerance_ms=0 even a 1 ms backwards jump is refused."""
    clock = FakeClock()
    gen = IdGenerator(1, clock=clock, clock_tolerance_ms=0)
    gen.next_id()
    clock.advance(-1)
    with pytest.raises(ClockMovedBackwards) as info:
        gen.next_id()
    assert info.value.behind_ms == 1


# -- restart with a watermark -----------------------------------------------


WatermarkFactory = Callable[[], Watermark]


@pytest.fixture(params=["memory", "file"])
def watermark_factory(request: pytest.FixtureRequest, tmp_path: Path) -> WatermarkFactory:
    """Return a factory that reopens one shared watermark (in memory or in a file)."""
    if request.param == "memory":
        shared = MemoryWatermark()
        return lambda: shared
    path = tmp_path / "wm" / "idgen.mark"
    return lambda: FileWatermark(path)


def _first_life(watermark: Watermark) -> tuple[list[int], int]:
    """Run a generator for a few ms; return its IDs and the last issued unix ms."""
    clock = FakeClock()
    gen = IdGenerator(3, clock=clock, watermark=watermark)
    ids: list[int] = []
    for _ in range(5):
        ids.append(gen.next_id())
        ids.extend(gen.next_ids(100))
        clock.advance(2)
    last_ms = decode(ids[-1]).unix_ms
    assert watermark.load() > last_ms
    return ids, last_ms


@pytest.mark.parametrize("set_back", [1, 200, 999])
def test_restart_set_back_less_than_reserve_catches_up(
    watermark_factory: WatermarkFactory, set_back: int
) -> None:
    """After a restart with the clock set back by less than reserve_ms, catch_up waits and all
    new IDs exceed every old one."""
    old_ids, last_ms = _first_life(watermark_factory())
    mark = watermark_factory().load()
    clock = FakeClock(start_ms=last_ms - set_back)
    gen = IdGenerator(3, clock=clock, watermark=watermark_factory())
    assert gen.behind_ms() > gen.clock_tolerance_ms
    with pytest.raises(ClockMovedBackwards):
        gen.next_id()
    assert gen.catch_up(2 * 1000) is True
    assert clock.sleeps == [mark - (last_ms - set_back)]
    assert gen.behind_ms() == 0
    new_ids = [gen.next_id() for _ in range(10)] + gen.next_ids(5000)
    assert min(new_ids) > max(old_ids)
    _assert_strictly_increasing(new_ids)


def test_restart_set_back_an_hour_refuses_until_mark(
    watermark_factory: WatermarkFactory,
) -> None:
    """After a restart with the clock set back an hour, next_id refuses, catch_up(reserve_ms)
    gives up, and once the clock passes the mark IDs resume above all old ones."""
    old_ids, last_ms = _first_life(watermark_factory())
    mark = watermark_factory().load()
    clock = FakeClock(start_ms=last_ms - 3_600_000)
    gen = IdGenerator(3, clock=clock, watermark=watermark_factory())
    with pytest.raises(ClockMovedBackwards) as info:
        gen.next_id()
    assert info.value.behind_ms >= 3_600_000
    with pytest.raises(ClockMovedBackwards):
        gen.next_ids(3)
    assert gen.catch_up(1000) is False
    assert clock.sleeps == []
    clock.set_ms(mark)
    new_ids = [gen.next_id() for _ in range(10)] + gen.next_ids(100)
    assert min(new_ids) > max(old_ids)
    _assert_strictly_increasing(new_ids)


def test_restart_does_not_reuse_the_reserved_window(
    watermark_factory: WatermarkFactory,
) -> None:
    """A restarted generator with an on-time clock still stamps nothing before the stored mark."""
    _, last_ms = _first_life(watermark_factory())
    mark = watermark_factory().load()
    clock = FakeClock(start_ms=last_ms + 1)
    gen = IdGenerator(3, clock=clock, watermark=watermark_factory(), clock_tolerance_ms=10**6)
    assert decode(gen.next_id()).unix_ms >= mark


def test_catch_up_returns_true_when_not_behind() -> None:
    """catch_up returns True at once when the clock is not behind."""
    clock = FakeClock()
    gen = IdGenerator(3, clock=clock)
    assert gen.catch_up(0) is True
    assert clock.sleeps == []


def test_file_watermark_written_with_mark_above_issued_ids(tmp_path: Path) -> None:
    """FileWatermark stores a decimal int greater than every issued timestamp."""
    path = tmp_path / "sub" / "mark"
    clock = FakeClock()
    gen = IdGenerator(3, clock=clock, watermark=FileWatermark(path))
    ids = [gen.next_id() for _ in range(10)]
    clock.advance(999)
    ids += gen.next_ids(10)
    text = path.read_text(encoding="ascii")
    assert text.strip().isdigit()
    assert int(text) > max(decode(i).unix_ms for i in ids)
    assert FileWatermark(path).load() == int(text)
    assert not path.with_name(path.name + ".tmp").exists()


def test_file_watermark_missing_file_loads_zero(tmp_path: Path) -> None:
    """A FileWatermark whose file does not exist loads 0 and a generator starts normally."""
    path = tmp_path / "absent"
    assert FileWatermark(path).load() == 0
    gen = IdGenerator(3, clock=FakeClock(), watermark=FileWatermark(path))
    assert decode(gen.next_id()).unix_ms == START_MS


@pytest.mark.parametrize(
    "content", [b"garbage\n", b"", b"-5\n", b"12abc", b"1.5", b"\xff\xfe", b"\xd9\xa3"]
)
def test_corrupt_file_watermark_fails_construction(tmp_path: Path, content: bytes) -> None:
    """A FileWatermark file that does not hold a decimal mark raises ConfigurationError when a
    generator is built on it."""
    path = tmp_path / "mark"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError):
        IdGenerator(3, clock=FakeClock(), watermark=FileWatermark(path))


def test_file_watermark_store_failure_issues_no_id(tmp_path: Path) -> None:
    """When the watermark cannot be stored, next_id and next_ids raise Unavailable instead of
    issuing, and generation works again once storing does."""
    path = tmp_path / "mark"
    gen = IdGenerator(3, clock=FakeClock(), watermark=FileWatermark(path))
    blocker = path.with_name(path.name + ".tmp")
    blocker.mkdir()  # the temporary file cannot be opened for writing: store fails
    with pytest.raises(Unavailable):
        gen.next_id()
    with pytest.raises(Unavailable):
        gen.next_ids(2)
    assert not path.exists()
    blocker.rmdir()
    assert decode(gen.next_id()).sequence == 0
    assert int(path.read_text(encoding="ascii")) == START_MS + 1000


def test_watermark_stored_once_per_reservation_window() -> None:
    """The watermark is stored once per reserve_ms window, not once per ID."""
    clock = FakeClock()
    wm = MemoryWatermark()
    gen = IdGenerator(3, clock=clock, watermark=wm, reserve_ms=100)
    for _ in range(1000):
        gen.next_id()
        gen.next_id()
        clock.advance(1)
    assert wm.stores == 10
    assert wm.load() == START_MS + 1000


def test_frozen_clock_batch_stores_watermark_once() -> None:
    """10,000 IDs within one reservation window cost a single watermark store."""
    wm = MemoryWatermark()
    gen = IdGenerator(3, clock=FakeClock(), watermark=wm)
    gen.next_ids(10_000)
    assert wm.stores == 1
    assert wm.load() == START_MS + 1000


# -- time outside the 41-bit range ------------------------------------------


def test_clock_before_epoch_beyond_tolerance_is_refused() -> None:
    """A clock more than the tolerance before the epoch raises ClockMovedBackwards."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS - 1_000)
    gen = IdGenerator(3, clock=clock)
    with pytest.raises(ClockMovedBackwards):
        gen.next_id()
    with pytest.raises(ClockMovedBackwards):
        gen.next_ids(5)


def test_clock_just_before_epoch_waits_for_epoch() -> None:
    """A clock within the tolerance before the epoch is waited out and the first ID has elapsed
    time 0."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS - 5)
    gen = IdGenerator(3, clock=clock)
    d = decode(gen.next_id())
    assert (d.unix_ms, d.sequence) == (DEFAULT_EPOCH_MS, 0)


def test_last_millisecond_of_range_is_valid() -> None:
    """At exactly 2**41 - 1 ms after the epoch the generator still issues a valid ID."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS + MAX_TIMESTAMP)
    gen = IdGenerator(1023, clock=clock)
    gift_id = gen.next_id()
    assert 0 <= gift_id <= MAX_ID
    assert decode(gift_id).unix_ms == DEFAULT_EPOCH_MS + MAX_TIMESTAMP


@pytest.mark.parametrize("offset", [MAX_TIMESTAMP + 1, MAX_TIMESTAMP + 1_000, 2**50])
def test_clock_past_41_bit_range_is_unavailable(offset: int) -> None:
    """A clock 2**41 ms or more after the epoch raises Unavailable instead of issuing."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS + offset)
    gen = IdGenerator(3, clock=clock)
    with pytest.raises(Unavailable):
        gen.next_id()
    with pytest.raises(Unavailable):
        gen.next_ids(5)


def test_crossing_end_of_range_by_next_id_is_unavailable() -> None:
    """next_id raises Unavailable, not a 64-bit ID, when the clock crosses the end of the range
    inside an open reservation window."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS + MAX_TIMESTAMP)
    gen = IdGenerator(3, clock=clock)
    gen.next_id()
    clock.advance(1)
    with pytest.raises(Unavailable):
        gift_id = gen.next_id()
        assert gift_id <= MAX_ID, f"emitted out-of-range ID {gift_id}"


def test_crossing_end_of_range_by_next_ids_is_unavailable() -> None:
    """next_ids raises Unavailable, not 64-bit IDs, when a frozen-clock batch must spill past the
    last millisecond of the range."""
    clock = FakeClock(start_ms=DEFAULT_EPOCH_MS + MAX_TIMESTAMP)
    gen = IdGenerator(3, clock=clock)
    with pytest.raises(Unavailable):
        ids = gen.next_ids(5_000)
        assert max(ids) <= MAX_ID, f"emitted out-of-range ID {max(ids)}"


# -- argument validation ----------------------------------------------------


@pytest.mark.parametrize("workshop", [-1, 1024])
def test_invalid_workshop_id_rejected(workshop: int) -> None:
    """IdGenerator rejects workshop ids outside 0..1023 with field 'workshop_id'."""
    with pytest.raises(InvalidInput) as info:
        IdGenerator(workshop, clock=FakeClock())
    assert info.value.field == "workshop_id"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"clock_tolerance_ms": -1}, "clock_tolerance_ms"), ({"reserve_ms": 0}, "reserve_ms")],
)
def test_invalid_tuning_args_rejected(kwargs: dict[str, int], field: str) -> None:
    """IdGenerator rejects a negative tolerance or a reserve below 1 ms, naming the field."""
    with pytest.raises(InvalidInput) as info:
        IdGenerator(1, clock=FakeClock(), **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("count", [0, -1])
def test_next_ids_rejects_non_positive_count(count: int) -> None:
    """next_ids raises InvalidInput with field 'count' for counts below 1."""
    gen = IdGenerator(1, clock=FakeClock())
    with pytest.raises(InvalidInput) as info:
        gen.next_ids(count)
    assert info.value.field == "count"


# -- threads ----------------------------------------------------------------


def test_threads_share_one_generator_without_duplicates() -> None:
    """8 threads x 100,000 IDs from one real-clock generator are all unique and each thread's
    own IDs strictly increase."""
    gen = IdGenerator(11)
    per_thread = 100_000
    barrier = threading.Barrier(8)

    def worker() -> list[int]:
        next_id = gen.next_id
        barrier.wait()
        return [next_id() for _ in range(per_thread)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(worker) for _ in range(8)]
        results = [f.result(timeout=100) for f in futures]
    all_ids: set[int] = set()
    for ids in results:
        assert len(ids) == per_thread
        _assert_strictly_increasing(ids)
        all_ids.update(ids)
    assert len(all_ids) == 8 * per_thread
    assert all(decode(i).workshop_id == 11 for i in (min(all_ids), max(all_ids)))
