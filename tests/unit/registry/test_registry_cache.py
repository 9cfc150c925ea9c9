"""The LRU cache in front of lookups by id."""

from __future__ import annotations

from northpole.registry.cache import GiftCache
from northpole.registry.model import Gift


class Clock:
    """Monotonic seconds moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gift(gift_id: int, recipient_id: str = "c") -> Gift:
    """A gift with id ``gift_id``."""
    return Gift(gift_id, 1, 1_000, "ball", recipient_id)


def test_least_recently_used_entry_is_evicted() -> None:
    """Past capacity the entry used longest ago goes; a lookup counts as a use."""
    cache = GiftCache(2, ttl_s=60)
    cache.put(gift(1), cache.stamp())
    cache.put(gift(2), cache.stamp())
    assert cache.get(1) == gift(1)
    cache.put(gift(3), cache.stamp())
    assert (cache.get(1), cache.get(2), cache.get(3)) == (gift(1), None, gift(3))


def test_entries_expire_after_ttl() -> None:
    """An entry is not served once its ttl has passed."""
    clock = Clock()
    cache = GiftCache(10, ttl_s=5, clock=clock)
    cache.put(gift(1), cache.stamp())
    clock.now += 4.9
    assert cache.get(1) == gift(1)
    clock.now += 0.2
    assert cache.get(1) is None
    assert len(cache) == 0


def test_invalidation_forgets_the_gift() -> None:
    """An invalidated gift is read from the database again."""
    cache = GiftCache(10, ttl_s=60)
    cache.put(gift(1), cache.stamp())
    cache.invalidate([1])
    assert cache.get(1) is None


def test_fill_from_a_read_that_raced_a_write_is_refused() -> None:
    """A read that started before an invalidation cannot put its (old) row in the cache."""
    cache = GiftCache(10, ttl_s=60)
    stamp = cache.stamp()
    cache.invalidate([1])
    assert not cache.put(gift(1, "old"), stamp)
    assert cache.get(1) is None
    assert cache.put(gift(1, "new"), cache.stamp())


def test_zero_capacity_caches_nothing() -> None:
    """A cache of size 0 is off."""
    cache = GiftCache(0, ttl_s=60)
    assert not cache.put(gift(1), cache.stamp())
    assert cache.get(1) is None
