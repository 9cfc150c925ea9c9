"""The GiftRepository contract: every implementation (SQLite, PostgreSQL) passes it."""

from __future__ import annotations

import pytest
from registry_fixtures import (
    START_MS,
    GiftBackend,
    GiftFactory,
    gift_backend,
    gifts,
    make_gift,
    postgres_server,
    postgres_url,
)

from northpole.bus.memory import MemoryStream
from northpole.bus.outbox import OutboxRelay
from northpole.bus.subjects import GIFT_CREATED, GIFT_STATUS_CHANGED
from northpole.core.errors import Conflict
from northpole.registry.events import status_from_wire
from northpole.registry.lifecycle import TaskSignal
from northpole.registry.model import (
    Cursor,
    GiftNotFound,
    GiftPatch,
    GiftQuery,
    GiftStatus,
)
from northpole.registry.repository import GiftRepository
from northpole.registry.settings import LifecycleTaskTypes
from northpole.v1 import events_pb2

__all__ = ["gift_backend", "gifts", "make_gift", "postgres_server", "postgres_url"]

TYPES = LifecycleTaskTypes()


def signal(
    gift_id: int, task_type: str, state: str, *, task_id: int = 1, at: int = 0
) -> TaskSignal:
    """A task event of ``gift_id``."""
    return TaskSignal(gift_id, task_id, task_type, state, START_MS + at)


async def test_created_gift_reads_back_equal(gifts: GiftRepository, make_gift: GiftFactory) -> None:
    """A created gift is returned by get with every field as written."""
    gift = make_gift(recipient_id="child-7", gift_type="kite")
    await gifts.create([gift])
    assert await gifts.get(gift.id) == gift


async def test_get_of_unknown_id_raises_not_found(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Reading an id nobody created raises GiftNotFound naming the id."""
    gift = make_gift()
    with pytest.raises(GiftNotFound) as caught:
        await gifts.get(gift.id)
    assert caught.value.gift_id == gift.id


@pytest.mark.parametrize("count", [1, 63, 64, 2_000])
async def test_batch_create_stores_every_gift(
    gifts: GiftRepository, make_gift: GiftFactory, count: int
) -> None:
    """Batches below and above the COPY threshold store every gift."""
    batch = make_gift.many(count)
    await gifts.create(batch)
    page = await gifts.find(GiftQuery(limit=1_000))
    assert page.gifts == batch[:1_000]
    assert await gifts.get(batch[-1].id) == batch[-1]


@pytest.mark.parametrize("count", [2, 200])
async def test_batch_with_an_existing_id_stores_nothing(
    gifts: GiftRepository, make_gift: GiftFactory, count: int
) -> None:
    """A batch naming an id that exists is refused whole: no gift and no event of it is stored."""
    first = make_gift()
    await gifts.create([first])
    await gifts.outbox.remove([row.id for row in await gifts.outbox.pending(10)])
    batch = [*make_gift.many(count - 1), first]
    with pytest.raises(Conflict):
        await gifts.create(batch)
    with pytest.raises(GiftNotFound):
        await gifts.get(batch[0].id)
    assert await gifts.outbox.pending(10) == []


async def test_create_writes_one_created_event_per_gift_in_order(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Each created gift leaves a gift.created outbox row holding its GiftCreated."""
    batch = make_gift.many(3, recipient_id="child-2", gift_type="doll")
    await gifts.create(batch)
    rows = await gifts.outbox.pending(10)
    assert [row.subject for row in rows] == [GIFT_CREATED] * 3
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    decoded = [events_pb2.GiftCreated.FromString(row.data) for row in rows]
    assert [int(m.gift_id) for m in decoded] == [g.id for g in batch]
    first = decoded[0]
    assert (first.workshop_id, first.gift_type, first.recipient_id) == (3, "doll", "child-2")
    assert status_from_wire(first.status) is GiftStatus.REQUESTED
    assert first.created_at.ToMilliseconds() == batch[0].created_ms


async def test_outbox_pending_is_oldest_first_and_bounded(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """pending returns at most limit rows, oldest first; removed rows do not come back."""
    await gifts.create(make_gift.many(5))
    first = await gifts.outbox.pending(2)
    assert len(first) == 2
    await gifts.outbox.remove([row.id for row in first])
    rest = await gifts.outbox.pending(10)
    assert len(rest) == 3
    assert min(row.id for row in rest) > max(row.id for row in first)


async def test_outbox_ids_are_not_reused_after_the_table_empties(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Row ids keep growing after every row was relayed and deleted (they name events)."""
    await gifts.create(make_gift.many(2))
    old = await gifts.outbox.pending(10)
    await gifts.outbox.remove([row.id for row in old])
    await gifts.create(make_gift.many(1))
    (new,) = await gifts.outbox.pending(10)
    assert new.id > max(row.id for row in old)


async def test_relay_moves_every_event_to_the_stream(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """An OutboxRelay over the repository's outbox publishes each event once and empties it."""
    await gifts.create(make_gift.many(25))
    stream = MemoryStream()
    relay = OutboxRelay(gifts.outbox, stream, batch=10)
    assert await relay.drain() == 25
    assert stream.last_seq == 25
    assert await gifts.outbox.pending(10) == []


async def test_find_by_recipient_pages_in_creation_order(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Pages of one recipient's gifts follow (created, id) order, without gaps or repeats."""
    mine = [make_gift(recipient_id="ann", at_ms=START_MS + i) for i in range(7)]
    others = make_gift.many(3, recipient_id="bob")
    await gifts.create([*others, *mine])
    seen, after = [], None
    for _ in range(10):
        page = await gifts.find(GiftQuery(recipient_id="ann", after=after, limit=3))
        seen += page.gifts
        after = page.next
        if after is None:
            break
    assert seen == mine


async def test_last_page_has_no_cursor(gifts: GiftRepository, make_gift: GiftFactory) -> None:
    """A page holding the last match has no next cursor, even when it is exactly full."""
    await gifts.create(make_gift.many(4))
    page = await gifts.find(GiftQuery(limit=4))
    assert len(page.gifts) == 4
    assert page.next is None


async def test_find_filters_by_status_and_since(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """status and since select only matching gifts; a cursor continues after its position."""
    old = make_gift(at_ms=START_MS - 86_400_000)
    new = make_gift(at_ms=START_MS)
    done = make_gift(at_ms=START_MS + 1, status=GiftStatus.DELIVERED)
    await gifts.create([old, new, done])
    since = await gifts.find(GiftQuery(since_ms=START_MS))
    assert since.gifts == [new, done]
    delivered = await gifts.find(GiftQuery(status=GiftStatus.DELIVERED))
    assert delivered.gifts == [done]
    after = await gifts.find(GiftQuery(after=Cursor(new.created_ms, new.id)))
    assert after.gifts == [done]


async def test_gifts_of_different_months_are_all_stored(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """One batch spanning several months (partitions on PostgreSQL) is stored whole."""
    months = [make_gift(at_ms=START_MS + i * 31 * 86_400_000) for i in range(4)]
    await gifts.create(months)
    assert (await gifts.find(GiftQuery())).gifts == months


async def test_patch_changes_only_the_operator_fields(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """A patch changes the fields it names and leaves the rest (status included)."""
    gift = make_gift(gift_type="ball", recipient_id="c1")
    await gifts.create([gift])
    changed = await gifts.patch(gift.id, GiftPatch(recipient_id="c2"))
    assert (changed.gift_type, changed.recipient_id, changed.status) == (
        "ball",
        "c2",
        GiftStatus.REQUESTED,
    )
    assert await gifts.get(gift.id) == changed


async def test_patch_of_unknown_gift_raises_not_found(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Patching an id nobody created raises GiftNotFound."""
    with pytest.raises(GiftNotFound):
        await gifts.patch(make_gift().id, GiftPatch(gift_type="x"))


async def test_follow_moves_status_and_writes_its_event(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """A build task starting makes the gift IN_PRODUCTION and stores a gift.status_changed row."""
    gift = make_gift()
    await gifts.create([gift])
    await gifts.outbox.remove([row.id for row in await gifts.outbox.pending(10)])
    changes = await gifts.follow([signal(gift.id, "build", "IN_PROGRESS", task_id=9)], TYPES)
    assert [(c.old, c.new) for c in changes] == [(GiftStatus.REQUESTED, GiftStatus.IN_PRODUCTION)]
    assert (await gifts.get(gift.id)).status is GiftStatus.IN_PRODUCTION
    (row,) = await gifts.outbox.pending(10)
    assert row.subject == GIFT_STATUS_CHANGED
    event = events_pb2.GiftStatusChanged.FromString(row.data)
    assert int(event.gift_id) == gift.id
    assert status_from_wire(event.new_status) is GiftStatus.IN_PRODUCTION
    assert event.cause == "task 9 build IN_PROGRESS"


async def test_follow_is_idempotent_and_never_goes_back(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """A repeated event and an older stage's event change nothing and write no event."""
    gift = make_gift()
    await gifts.create([gift])
    await gifts.follow([signal(gift.id, "wrap", "COMPLETED")], TYPES)
    await gifts.outbox.remove([row.id for row in await gifts.outbox.pending(10)])
    again = [signal(gift.id, "wrap", "COMPLETED"), signal(gift.id, "build", "IN_PROGRESS")]
    assert await gifts.follow(again, TYPES) == []
    assert (await gifts.get(gift.id)).status is GiftStatus.WRAPPED
    assert await gifts.outbox.pending(10) == []


async def test_follow_applies_a_gifts_signals_in_order(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """Several signals of one gift in one call give one change each, in order."""
    gift = make_gift()
    await gifts.create([gift])
    steps = [
        signal(gift.id, "build", "ASSIGNED"),
        signal(gift.id, "wrap", "COMPLETED", at=1),
        signal(gift.id, "load", "COMPLETED", at=2),
    ]
    changes = await gifts.follow(steps, TYPES)
    assert [c.new for c in changes] == [
        GiftStatus.IN_PRODUCTION,
        GiftStatus.WRAPPED,
        GiftStatus.LOADED,
    ]
    assert (await gifts.get(gift.id)).status is GiftStatus.LOADED


async def test_follow_skips_unknown_gifts(gifts: GiftRepository, make_gift: GiftFactory) -> None:
    """Signals of gifts that are not registered change nothing and do not fail the others."""
    known, unknown = make_gift(), make_gift()
    await gifts.create([known])
    changes = await gifts.follow(
        [signal(unknown.id, "build", "ASSIGNED"), signal(known.id, "build", "ASSIGNED")], TYPES
    )
    assert [c.gift_id for c in changes] == [known.id]


async def test_failed_is_final(gifts: GiftRepository, make_gift: GiftFactory) -> None:
    """A final task failure fails the gift, and later successes do not revive it."""
    gift = make_gift()
    await gifts.create([gift])
    await gifts.follow([signal(gift.id, "wrap", "FAILED")], TYPES)
    assert await gifts.follow([signal(gift.id, "deliver", "COMPLETED")], TYPES) == []
    assert (await gifts.get(gift.id)).status is GiftStatus.FAILED


async def test_count_by_status_counts_every_status(
    gifts: GiftRepository, make_gift: GiftFactory
) -> None:
    """count_by_status has every status, zeros included."""
    batch = make_gift.many(3)
    await gifts.create(batch)
    await gifts.follow([signal(batch[0].id, "deliver", "COMPLETED")], TYPES)
    counts = await gifts.count_by_status()
    assert counts[GiftStatus.REQUESTED] == 2
    assert counts[GiftStatus.DELIVERED] == 1
    assert set(counts) == set(GiftStatus)


async def test_another_repository_object_sees_acknowledged_writes(
    gift_backend: GiftBackend, make_gift: GiftFactory
) -> None:
    """What one repository object wrote is read by another on the same data (another process)."""
    first = await gift_backend.open()
    gift = make_gift()
    await first.create([gift])
    await first.follow([signal(gift.id, "load", "COMPLETED")], LifecycleTaskTypes())
    await first.close()
    second = await gift_backend.open()
    assert (await second.get(gift.id)).status is GiftStatus.LOADED
    assert len(await second.outbox.pending(10)) == 2
