"""A sampling duplicate detector: a cheap alarm that should never ring.

Every ``every``-th issued ID is remembered in a bounded set (oldest forgotten
first); an ID seen twice is a collision. One generator's IDs are unique by
construction, so a hit means a bug or a misconfiguration (for example two
processes sharing a workshop id through a proxy): it is counted in
``gift_id_collisions_total`` and logged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class CollisionDetector:
    """Remember a sample of recent IDs and count repeats.

    Args:
        every: Sample one ID in this many.
        capacity: How many sampled IDs to remember.
    """

    def __init__(self, *, every: int = 64, capacity: int = 65_536) -> None:
        if every < 1 or capacity < 1:
            raise ValueError("every and capacity must be positive")
        self.every = every
        self.capacity = capacity
        self._seen: set[int] = set()
        self._order: deque[int] = deque()
        self._offset = 0

    def observe(self, ids: Sequence[int]) -> int:
        """Sample ``ids`` and return how many sampled ones had been seen before."""
        hits = 0
        start = self._offset
        for gift_id in ids[start :: self.every]:
            if gift_id in self._seen:
                hits += 1
                continue
            self._seen.add(gift_id)
            self._order.append(gift_id)
            if len(self._order) > self.capacity:
                self._seen.discard(self._order.popleft())
        # Carry the sampling phase over to the next call so small batches are sampled too.
        self._offset = (start - len(ids)) % self.every
        return hits
