"""The Gift ID generator: a thread-safe, strictly increasing Snowflake sequence.

Guarantees of one :class:`IdGenerator`:

* IDs are strictly increasing, and never repeat, for the life of the object.
* When the 4,096 sequence numbers of a millisecond are used up, it waits for
  the next millisecond.
* When the clock moves backwards by at most ``clock_tolerance_ms`` it waits
  until the clock is back; further back, it raises
  :class:`~northpole.core.errors.ClockMovedBackwards` until time catches up.
* With a :class:`~northpole.idgen.watermark.Watermark`, the same holds across
  restarts: see that module.

Uniqueness across generators comes from their workshop ids, which must differ;
:mod:`northpole.idgen.allocator` hands them out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from northpole.core.clock import Clock, SystemClock
from northpole.core.errors import ClockMovedBackwards, InvalidInput, Unavailable
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen.snowflake import (
    IDS_PER_MS,
    MAX_SEQUENCE,
    MAX_TIMESTAMP,
    TIMESTAMP_SHIFT,
    WORKSHOP_SHIFT,
    check_workshop_id,
)
from northpole.idgen.watermark import Watermark

#: Called as ``on_clock_backwards(behind_ms, refused)`` each time the clock is seen behind.
ClockBackwardsHook = Callable[[int, bool], None]


class IdGenerator:
    """Issue Gift IDs for one workshop.

    Args:
        workshop_id: This generator's workshop id (0-1023), unique among live generators.
        epoch_ms: The custom epoch in Unix ms (default 2025-01-01T00:00:00Z).
        clock: Where time comes from (default: the system clock).
        clock_tolerance_ms: How far back the clock may jump and still be waited out.
        watermark: Where to persist the high-water mark; ``None`` keeps it in memory only.
        reserve_ms: How far ahead each watermark store reserves.
        on_clock_backwards: Optional hook told about every backwards jump seen.

    Example:
        >>> gen = IdGenerator(workshop_id=7)
        >>> a, b = gen.next_id(), gen.next_id()
        >>> a < b
        True
    """

    def __init__(
        self,
        workshop_id: int,
        *,
        epoch_ms: int = DEFAULT_EPOCH_MS,
        clock: Clock | None = None,
        clock_tolerance_ms: int = 10,
        watermark: Watermark | None = None,
        reserve_ms: int = 1000,
        on_clock_backwards: ClockBackwardsHook | None = None,
    ) -> None:
        self.workshop_id = check_workshop_id(workshop_id)
        if clock_tolerance_ms < 0:
            raise InvalidInput("must be >= 0", field="clock_tolerance_ms")
        if reserve_ms < 1:
            raise InvalidInput("must be >= 1", field="reserve_ms")
        self.epoch_ms = epoch_ms
        self.clock_tolerance_ms = clock_tolerance_ms
        self._clock = clock or SystemClock()
        self._now_ms = self._clock.now_ms
        self._watermark = watermark
        self._reserve_ms = reserve_ms
        self._on_clock_backwards = on_clock_backwards
        self._workshop_bits = workshop_id << WORKSHOP_SHIFT
        self._lock = threading.Lock()
        mark = watermark.load() if watermark is not None else 0
        # Everything before the stored mark may have been issued by an earlier
        # process: treat the millisecond before it as fully used.
        self._last_ms = max(mark - 1, epoch_ms - 1)
        self._sequence = MAX_SEQUENCE
        self._reserved_until = 0

    # -- public API -------------------------------------------------------

    def next_id(self) -> int:
        """Return one new ID.

        Raises:
            ClockMovedBackwards: The clock is further behind than the tolerance.
            Unavailable: The watermark could not be stored, or time is outside the format.
        """
        with self._lock:
            now = self._now_ms()
            if now > self._last_ms and now < self._reserved_until:
                self._last_ms = now
                self._sequence = 0
                return ((now - self.epoch_ms) << TIMESTAMP_SHIFT) | self._workshop_bits
            now, seq = self._claim_slow(now)
            return ((now - self.epoch_ms) << TIMESTAMP_SHIFT) | self._workshop_bits | seq

    def next_ids(self, n: int) -> list[int]:
        """Return ``n`` new IDs in increasing order, a whole millisecond's run at a time.

        Raises:
            InvalidInput: ``n`` is smaller than 1.
            ClockMovedBackwards: The clock is further behind than the tolerance.
            Unavailable: The watermark could not be stored, or time is outside the format.
        """
        out: list[int] = []
        for run in self.next_runs(n):
            out.extend(run)
        return out

    def next_runs(self, n: int) -> list[range]:
        """Return ``n`` new IDs as runs of consecutive IDs, one run per millisecond used.

        Cheaper than :meth:`next_ids` when the IDs are only serialised, see
        :func:`northpole.idgen.wire.ids_json`.

        Raises:
            InvalidInput: ``n`` is smaller than 1.
            ClockMovedBackwards: The clock is further behind than the tolerance.
            Unavailable: The watermark could not be stored, or time is outside the format.
        """
        if n < 1:
            raise InvalidInput("count must be at least 1", field="count")
        runs: list[range] = []
        remaining = n
        with self._lock:
            while remaining:
                now, seq = self._claim_slow(self._now_ms())
                take = min(remaining, IDS_PER_MS - seq)
                base = ((now - self.epoch_ms) << TIMESTAMP_SHIFT) | self._workshop_bits
                runs.append(range(base + seq, base + seq + take))
                self._sequence = seq + take - 1
                remaining -= take
        return runs

    def behind_ms(self) -> int:
        """Return how far the clock is behind the last issued timestamp (0 when it is not)."""
        with self._lock:
            return max(0, self._last_ms - self._now_ms())

    def catch_up(self, max_wait_ms: int) -> bool:
        """Wait until the clock passes what an earlier process reserved, if that is close.

        A restart inside a reservation window finds the clock up to ``reserve_ms``
        behind the stored mark; waiting it out at start-up is better than refusing
        requests. Returns whether the clock is now ahead.
        """
        behind = self.behind_ms()
        if behind == 0:
            return True
        if behind > max_wait_ms:
            return False
        with self._lock:
            self._clock.sleep_until_ms(self._last_ms + 1)
        return True

    # -- internals --------------------------------------------------------

    def _claim_slow(self, now: int) -> tuple[int, int]:
        """Claim the next (millisecond, sequence) pair, waiting or refusing as needed."""
        while True:
            last = self._last_ms
            if now > last:
                if now >= self._reserved_until:
                    self._reserve(now)
                self._last_ms = now
                self._sequence = 0
                return now, 0
            if now == last:
                if self._sequence < MAX_SEQUENCE:
                    self._sequence += 1
                    return now, self._sequence
                self._clock.sleep_until_ms(last + 1)
            else:
                self._clock_went_back(last - now)
                self._clock.sleep_until_ms(last)
            now = self._now_ms()

    def _clock_went_back(self, behind: int) -> None:
        refused = behind > self.clock_tolerance_ms
        if self._on_clock_backwards is not None:
            self._on_clock_backwards(behind, refused)
        if refused:
            raise ClockMovedBackwards(behind_ms=behind, tolerance_ms=self.clock_tolerance_ms)

    def _reserve(self, now: int) -> None:
        elapsed = now - self.epoch_ms
        if not 0 <= elapsed <= MAX_TIMESTAMP:
            raise Unavailable(
                f"the clock ({now} ms) is outside the 41-bit range of epoch {self.epoch_ms}"
            )
        # Never reserve past the end of the range, so the fast path in next_id
        # comes back here (and refuses) once the range is used up.
        until = min(now + self._reserve_ms, self.epoch_ms + MAX_TIMESTAMP + 1)
        if self._watermark is not None:
            self._watermark.store(until)
        self._reserved_until = until
