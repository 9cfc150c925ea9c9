"""The in-process LRU cache in front of lookups by id (the design's application cache).

Gifts change (status, operator fields), so the cache must never keep serving
a gift after its change was acknowledged. Two rules ensure it:

* every write through this process invalidates the gifts it changed;
* a lookup that missed fills the cache only if no invalidation happened
  between the start of its database read and the fill (:meth:`GiftCache.stamp`),
  so a read that raced with a write cannot put the old row back.

Changes made by *other* processes (the cluster edition) are not seen here:
entries expire after ``ttl_s``, which bounds how stale a lookup can be.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from northpole.registry.model import Gift


class GiftCache:
    """Least-recently-used gifts by id, each kept at most ``ttl_s``.

    Args:
        capacity: Most gifts kept (0 keeps none).
        ttl_s: Longest an entry is served.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, capacity: int, *, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[int, tuple[float, Gift]] = OrderedDict()
        self._invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, gift_id: int) -> Gift | None:
        """The cached gift, or ``None`` (not cached, or expired)."""
        entry = self._entries.get(gift_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[gift_id]
            return None
        self._entries.move_to_end(gift_id)
        return entry[1]

    def stamp(self) -> int:
        """Take before reading the database; hand to :meth:`put` after."""
        return self._invalidations

    def put(self, gift: Gift, stamp: int) -> bool:
        """Cache ``gift`` unless something was invalidated since ``stamp``; return whether."""
        if self.capacity <= 0 or stamp != self._invalidations:
            return False
        self._entries[gift.id] = (self._clock() + self.ttl_s, gift)
        self._entries.move_to_end(gift.id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return True

    def invalidate(self, gift_ids: Iterable[int]) -> None:
        """Forget these gifts (and refuse fills of reads that started before)."""
        self._invalidations += 1
        for gift_id in gift_ids:
            self._entries.pop(gift_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self._invalidations += 1
        self._entries.clear()
