"""Unit tests for the Gift ID service's parts: CollisionDetector and LockFileAllocator."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from northpole.core.clock import FakeClock
from northpole.core.errors import InvalidInput, WorkshopIdUnavailable
from northpole.idgen.allocator import FileLease, LockFileAllocator
from northpole.idgen.collisions import CollisionDetector
from northpole.idgen.generator import IdGenerator

# -- CollisionDetector ------------------------------------------------------------------


def sampled(detector: CollisionDetector, candidates: list[int]) -> list[int]:
    """Return which of ``candidates`` the detector had sampled, probing one per full cycle.

    Each probe is a batch of ``every`` items with the candidate first, so it is the
    only one sampled and the phase is unchanged; requires the phase to be 0.
    """
    padding = [-(i + 1) for i in range(detector.every - 1)]
    return [c for c in candidates if detector.observe([c, *padding]) == 1]


def test_detector_has_no_false_hits_on_unique_ids() -> None:
    """A stream of unique generator ids, in batches of any size, never counts a hit."""
    generator = IdGenerator(5, clock=FakeClock())
    detector = CollisionDetector(every=1)
    hits = sum(detector.observe(generator.next_ids(n)) for n in (1, 7, 4096, 3, 500, 1))
    hits += sum(detector.observe([generator.next_id()]) for _ in range(100))
    assert hits == 0


def test_detector_counts_a_repeated_id() -> None:
    """An id seen again is counted as one hit per repeat."""
    detector = CollisionDetector(every=1)
    assert detector.observe([1, 2, 3]) == 0
    assert detector.observe([3]) == 1
    assert detector.observe([2, 4, 1]) == 2
    assert detector.observe([5, 5]) == 1


def test_detector_sampling_phase_carries_across_single_id_batches() -> None:
    """With every=4, feeding ids one at a time samples every 4th one (0, 4, 8, ...)."""
    detector = CollisionDetector(every=4)
    for gift_id in range(100, 112):
        detector.observe([gift_id])
    assert sampled(detector, list(range(100, 112))) == [100, 104, 108]


@pytest.mark.parametrize("sizes", [[12], [1] * 12, [3, 3, 3, 3], [5, 2, 1, 4], [2, 7, 3]])
def test_detector_sampling_is_independent_of_batching(sizes: list[int]) -> None:
    """However a stream is split into batches, the same positions are sampled."""
    detector = CollisionDetector(every=4)
    ids = list(range(200, 212))
    start = 0
    for size in sizes:
        assert detector.observe(ids[start : start + size]) == 0
        start += size
    assert sampled(detector, ids) == [200, 204, 208]


def test_detector_sampling_misses_unsampled_repeats() -> None:
    """A repeat of an id that was not sampled is not counted (sampling is a cheap alarm)."""
    detector = CollisionDetector(every=4)
    detector.observe([1, 2, 3, 4])
    assert detector.observe([2, 9, 9, 9]) == 0


def test_detector_capacity_evicts_oldest() -> None:
    """Past capacity the oldest sampled id is forgotten, the newer ones kept."""
    detector = CollisionDetector(every=1, capacity=2)
    detector.observe([1])
    detector.observe([2])
    detector.observe([3])
    assert detector.observe([3]) == 1
    assert detector.observe([2]) == 1
    assert detector.observe([1]) == 0


def test_detector_capacity_holds_within_one_batch() -> None:
    """A single batch larger than capacity keeps only the newest ids."""
    detector = CollisionDetector(every=1, capacity=3)
    detector.observe(list(range(10)))
    assert detector.observe([9, 8, 7]) == 3
    assert detector.observe([6]) == 0


@pytest.mark.parametrize(("every", "capacity"), [(0, 10), (-1, 10), (1, 0)])
def test_detector_rejects_non_positive_settings(every: int, capacity: int) -> None:
    """every and capacity must be at least 1."""
    with pytest.raises(ValueError, match="positive"):
        CollisionDetector(every=every, capacity=capacity)


def test_detector_empty_batch_is_harmless() -> None:
    """An empty batch counts nothing and does not shift the sampling phase."""
    detector = CollisionDetector(every=4)
    assert detector.observe([]) == 0
    detector.observe([10, 11, 12, 13])
    assert sampled(detector, [10, 11, 12, 13]) == [10]


# -- LockFileAllocator ------------------------------------------------------------------


async def test_allocator_grants_configured_id_and_records_pid(tmp_path: Path) -> None:
    """acquire returns a settings lease for the configured id and writes our pid to the lock."""
    allocator = LockFileAllocator(12, tmp_path / "idgen")
    lease = await allocator.acquire()
    try:
        assert isinstance(lease, FileLease)
        assert lease.workshop_id == 12
        assert lease.source == "settings"
        assert lease.path == allocator.lock_path() == tmp_path / "idgen" / "workshop-12.lock"
        assert lease.path.read_text().strip() == str(os.getpid())
        assert stat.S_IMODE(lease.path.stat().st_mode) == 0o600
        lease.check()
    finally:
        await allocator.release(lease)


async def test_allocator_second_acquire_names_holder_pid(tmp_path: Path) -> None:
    """A second acquire of a held id, even in the same process, fails naming the holder's pid."""
    first = LockFileAllocator(4, tmp_path)
    lease = await first.acquire()
    try:
        with pytest.raises(WorkshopIdUnavailable) as caught:
            await LockFileAllocator(4, tmp_path).acquire()
        assert f"pid {os.getpid()}" in caught.value.message
        assert caught.value.field == "workshop_id"
        assert caught.value.status_code == 503
        with pytest.raises(WorkshopIdUnavailable):
            await first.acquire()
        lease.check()
    finally:
        await first.release(lease)


async def test_allocator_other_ids_are_independent(tmp_path: Path) -> None:
    """Different workshop ids on one directory can be held at the same time."""
    one = await LockFileAllocator(1, tmp_path).acquire()
    two = await LockFileAllocator(2, tmp_path).acquire()
    assert (one.workshop_id, two.workshop_id) == (1, 2)
    one.close()
    two.close()


async def test_allocator_release_allows_reacquire(tmp_path: Path) -> None:
    """After release the same id can be acquired again."""
    allocator = LockFileAllocator(7, tmp_path)
    lease = await allocator.acquire()
    await allocator.release(lease)
    again = await LockFileAllocator(7, tmp_path).acquire()
    assert again.workshop_id == 7
    await allocator.release(again)


async def test_lease_check_after_close_raises(tmp_path: Path) -> None:
    """A closed lease fails check; closing twice is harmless."""
    lease = await LockFileAllocator(9, tmp_path).acquire()
    lease.close()
    with pytest.raises(WorkshopIdUnavailable, match="9"):
        lease.check()
    lease.close()
    with pytest.raises(WorkshopIdUnavailable):
        lease.check()


@pytest.mark.parametrize("workshop_id", [-1, 1024])
def test_allocator_rejects_out_of_range_id(tmp_path: Path, workshop_id: int) -> None:
    """A workshop id outside 0-1023 is refused when the allocator is built."""
    with pytest.raises(InvalidInput) as caught:
        LockFileAllocator(workshop_id, tmp_path)
    assert caught.value.field == "workshop_id"
