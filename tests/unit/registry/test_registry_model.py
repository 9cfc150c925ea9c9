"""Gift records, cursors, events and partition months (pure)."""

from __future__ import annotations

import pytest

from northpole.core.errors import InvalidInput
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen import encode
from northpole.registry.events import created_event, status_event, status_from_wire, wire_status
from northpole.registry.model import (
    Cursor,
    Gift,
    GiftPatch,
    GiftStatus,
    NewGift,
    StatusChange,
    new_gift,
    patched,
)
from northpole.registry.partitions import Month, plan_upkeep
from northpole.v1 import events_pb2

JAN_15 = 1_768_435_200_000  # 2026-01-15T00:00:00Z


def test_new_gift_takes_time_and_workshop_from_its_id() -> None:
    """A new gift's created_ms and workshop_id are the ones encoded in its id."""
    gift_id = encode(elapsed_ms=JAN_15 - DEFAULT_EPOCH_MS, workshop_id=42, sequence=5)
    gift = new_gift(gift_id, NewGift("kite", "c1"), epoch_ms=DEFAULT_EPOCH_MS)
    assert (gift.created_ms, gift.workshop_id, gift.status) == (JAN_15, 42, GiftStatus.REQUESTED)


def test_cursor_round_trips_through_its_wire_form() -> None:
    """A cursor decodes to the position it was encoded from."""
    cursor = Cursor(JAN_15, 123_456_789_012)
    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("text", ["", "not-a-cursor!", "AAAA", "_" * 22])
def test_bad_cursor_is_invalid_input_naming_cursor(text: str) -> None:
    """Text that is not a cursor this API issued is refused, naming the cursor field."""
    with pytest.raises(InvalidInput) as caught:
        Cursor.decode(text)
    assert caught.value.field == "cursor"


def test_patch_keeps_unnamed_fields() -> None:
    """patched changes only the fields the patch names."""
    gift = Gift(1, 2, 3, "ball", "c1")
    assert patched(gift, GiftPatch(gift_type="bat")) == Gift(1, 2, 3, "bat", "c1")
    assert GiftPatch().empty


def test_every_status_has_a_wire_value_and_back() -> None:
    """Each status maps to a protobuf enum value that maps back to it."""
    for status in GiftStatus:
        assert status_from_wire(wire_status(status)) is status


def test_status_event_carries_old_new_time_and_cause() -> None:
    """A status change's payload decodes to the same change."""
    subject, data = status_event(
        StatusChange(7, GiftStatus.WRAPPED, GiftStatus.LOADED, JAN_15 + 5, "task 1 load COMPLETED")
    )
    message = events_pb2.GiftStatusChanged.FromString(data)
    assert subject == "gift.status_changed"
    assert (message.gift_id, message.at.ToMilliseconds(), message.cause) == (
        "7",
        JAN_15 + 5,
        "task 1 load COMPLETED",
    )
    assert status_from_wire(message.old_status) is GiftStatus.WRAPPED


def test_created_event_subject() -> None:
    """A new gift's event goes to gift.created."""
    assert created_event(Gift(1, 2, JAN_15, "ball", "c1"))[0] == "gift.created"


def test_month_arithmetic_and_names() -> None:
    """Months add across years, name their partition and bound it."""
    month = Month.of(JAN_15)
    assert (str(month), month.table) == ("2026-01", "gifts_p2026_01")
    assert month.plus(-1) == Month(2025, 12)
    assert month.plus(12) == Month(2027, 1)
    assert month.end == Month(2026, 2).start
    assert Month.parse("gifts_p2025_07") == Month.parse("2025-07") == Month(2025, 7)


@pytest.mark.parametrize("text", ["2025-13", "2025-7", "gifts_2025_01", ""])
def test_bad_month_is_invalid_input(text: str) -> None:
    """Text that is not YYYY-MM (or a partition name) is refused."""
    with pytest.raises(InvalidInput):
        Month.parse(text)


def test_upkeep_creates_ahead_and_archives_past_retention() -> None:
    """Upkeep wants the current month plus ahead, and archives months older than retention."""
    attached = [Month(2024, 12), Month(2025, 1), Month(2025, 2), Month(2026, 1)]
    plan = plan_upkeep(JAN_15, attached, ahead=2, retention_months=12)
    assert plan.create == [Month(2026, 2), Month(2026, 3)]
    assert plan.archive == [Month(2024, 12)]
