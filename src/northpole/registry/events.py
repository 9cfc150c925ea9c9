"""The registry's events as outbox rows: subjects and protobuf payloads (pure).

Each gift write stores, in the same transaction, one outbox row per event:

* ``gift.created``: ``GiftCreated`` (``proto/northpole/v1/events.proto``)
* ``gift.status_changed``: ``GiftStatusChanged``
"""

from __future__ import annotations

from northpole.bus.subjects import GIFT_CREATED, GIFT_STATUS_CHANGED
from northpole.registry.model import Gift, GiftStatus, StatusChange
from northpole.v1 import events_pb2

#: An outbox row before it has an id: ``(subject, payload)``.
Event = tuple[str, bytes]

_WIRE_STATUS = {
    GiftStatus.REQUESTED: events_pb2.GIFT_STATUS_REQUESTED,
    GiftStatus.IN_PRODUCTION: events_pb2.GIFT_STATUS_IN_PRODUCTION,
    GiftStatus.WRAPPED: events_pb2.GIFT_STATUS_WRAPPED,
    GiftStatus.LOADED: events_pb2.GIFT_STATUS_LOADED,
    GiftStatus.DELIVERED: events_pb2.GIFT_STATUS_DELIVERED,
    GiftStatus.FAILED: events_pb2.GIFT_STATUS_FAILED,
}
_FROM_WIRE = {int(wire): status for status, wire in _WIRE_STATUS.items()}


def _timestamp(ms: int) -> dict[str, int]:
    """A ``google.protobuf.Timestamp`` as the message constructors take it."""
    return {"seconds": ms // 1000, "nanos": (ms % 1000) * 1_000_000}


def wire_status(status: GiftStatus) -> events_pb2.GiftStatus:
    """The protobuf enum value of ``status``."""
    return _WIRE_STATUS[status]


def status_from_wire(value: int) -> GiftStatus:
    """The status a protobuf enum value names.

    Raises:
        KeyError: ``value`` is UNSPECIFIED or unknown.
    """
    return _FROM_WIRE[int(value)]


def created_event(gift: Gift) -> Event:
    """The ``gift.created`` row of a new gift."""
    message = events_pb2.GiftCreated(
        gift_id=str(gift.id),
        workshop_id=gift.workshop_id,
        gift_type=gift.gift_type,
        recipient_id=gift.recipient_id,
        status=_WIRE_STATUS[gift.status],
        created_at=_timestamp(gift.created_ms),
    )
    return GIFT_CREATED, message.SerializeToString()


def status_event(change: StatusChange) -> Event:
    """The ``gift.status_changed`` row of a status change."""
    message = events_pb2.GiftStatusChanged(
        gift_id=str(change.gift_id),
        old_status=_WIRE_STATUS[change.old],
        new_status=_WIRE_STATUS[change.new],
        at=_timestamp(change.at_ms),
        cause=change.cause,
    )
    return GIFT_STATUS_CHANGED, message.SerializeToString()
