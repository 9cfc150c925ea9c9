"""Unit tests for northpole.core.clock: the FakeClock test double and the SystemClock."""

from __future__ import annotations

import threading
import time

from northpole.core.clock import Clock, FakeClock, SystemClock


def test_fake_clock_starts_at_given_time() -> None:
    """FakeClock.now_ms returns the start time it was built with."""
    clock = FakeClock(start_ms=1_000)
    assert clock.now_ms() == 1_000
    assert clock.sleeps == []


def test_fake_clock_default_start_is_fixed() -> None:
    """FakeClock built without arguments starts at 2026-01-01T00:00:00Z."""
    assert FakeClock().now_ms() == 1_767_225_600_000


def test_fake_clock_does_not_move_on_its_own() -> None:
    """FakeClock returns the same time on repeated reads when nobody moves it."""
    clock = FakeClock(start_ms=5)
    assert [clock.now_ms() for _ in range(10)] == [5] * 10


def test_fake_clock_set_ms_accepts_earlier_and_later_times() -> None:
    """FakeClock.set_ms moves the time to any value, backwards included."""
    clock = FakeClock(start_ms=1_000)
    clock.set_ms(500)
    assert clock.now_ms() == 500
    clock.set_ms(2_000)
    assert clock.now_ms() == 2_000
    assert clock.sleeps == []


def test_fake_clock_advance_moves_forward_and_backward() -> None:
    """FakeClock.advance adds a positive or negative delta to the time."""
    clock = FakeClock(start_ms=1_000)
    clock.advance(25)
    assert clock.now_ms() == 1_025
    clock.advance(-100)
    assert clock.now_ms() == 925
    clock.advance(0)
    assert clock.now_ms() == 925
    assert clock.sleeps == []


def test_fake_clock_sleep_until_jumps_forward_and_records_wait() -> None:
    """FakeClock.sleep_until_ms jumps to a later target and records the waited delta."""
    clock = FakeClock(start_ms=1_000)
    clock.sleep_until_ms(1_007)
    assert clock.now_ms() == 1_007
    assert clock.sleeps == [7]
    clock.sleep_until_ms(1_010)
    assert clock.now_ms() == 1_010
    assert clock.sleeps == [7, 3]


def test_fake_clock_sleep_until_never_goes_backwards() -> None:
    """FakeClock.sleep_until_ms with a past or current target leaves the time and record alone."""
    clock = FakeClock(start_ms=1_000)
    clock.sleep_until_ms(999)
    clock.sleep_until_ms(1_000)
    clock.sleep_until_ms(-5)
    assert clock.now_ms() == 1_000
    assert clock.sleeps == []


def test_fake_clock_is_thread_safe_under_concurrent_advance() -> None:
    """Concurrent FakeClock.advance calls from many threads lose no update."""
    clock = FakeClock(start_ms=0)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(5_000):
            clock.advance(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now_ms() == 40_000


def test_clocks_satisfy_clock_protocol() -> None:
    """FakeClock and SystemClock both satisfy the runtime-checkable Clock protocol."""
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SystemClock(), Clock)


def test_system_clock_now_ms_is_close_to_time_time() -> None:
    """SystemClock.now_ms is an int within a few ms of time.time() * 1000."""
    clock = SystemClock()
    before = time.time() * 1000
    now = clock.now_ms()
    after = time.time() * 1000
    assert isinstance(now, int)
    assert before - 2 <= now <= after + 2


def test_system_clock_sleep_until_returns_at_or_after_target() -> None:
    """SystemClock.sleep_until_ms(now + 5) returns only once the target time is reached."""
    clock = SystemClock()
    target = clock.now_ms() + 5
    clock.sleep_until_ms(target)
    assert clock.now_ms() >= target
    assert time.time_ns() // 1_000_000 >= target


def test_system_clock_sleep_until_returns_at_once_for_past_target() -> None:
    """SystemClock.sleep_until_ms with a past target returns without sleeping."""
    clock = SystemClock()
    start = time.perf_counter()
    clock.sleep_until_ms(clock.now_ms() - 1_000)
    assert time.perf_counter() - start < 0.05
