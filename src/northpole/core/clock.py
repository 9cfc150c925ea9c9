"""The Clock port: where every part reads wall-clock time.

Parts never call :func:`time.time` directly; they take a :class:`Clock` so tests
can drive time by hand with :class:`FakeClock` (including moving it backwards).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Milliseconds of wall-clock time, and a way to wait for a given one."""

    def now_ms(self) -> int:
        """Return the current Unix time in milliseconds."""
        ...

    def sleep_until_ms(self, target_ms: int) -> None:
        """Block until :meth:`now_ms` returns at least ``target_ms``."""
        ...


class SystemClock:
    """The machine's wall clock."""

    __slots__ = ()

    def now_ms(self) -> int:
        """Return the current Unix time in milliseconds."""
        return time.time_ns() // 1_000_000

    def sleep_until_ms(self, target_ms: int) -> None:
        """Sleep most of the way, then spin for the last millisecond (sleep is coarse)."""
        while True:
            remaining = target_ms - time.time_ns() // 1_000_000
            if remaining <= 0:
                return
            if remaining > 2:
                time.sleep((remaining - 1) / 1000)


class FakeClock:
    """A clock that only moves when told to; thread-safe.

    ``sleep_until_ms`` advances the clock to the target at once, so code that
    waits on a FakeClock never blocks a test.
    """

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()
        self.sleeps: list[int] = []

    def now_ms(self) -> int:
        """Return the fake time."""
        with self._lock:
            return self._now

    def sleep_until_ms(self, target_ms: int) -> None:
        """Jump forward to ``target_ms`` (never backwards) and record the wait."""
        with self._lock:
            if target_ms > self._now:
                self.sleeps.append(target_ms - self._now)
                self._now = target_ms

    def set_ms(self, value_ms: int) -> None:
        """Set the time to any value, earlier ones included."""
        with self._lock:
            self._now = value_ms

    def advance(self, delta_ms: int) -> None:
        """Move the time by ``delta_ms`` (negative moves it backwards)."""
        with self._lock:
            self._now += delta_ms
