"""Exchange events on the wire: ``exchange.committed`` as protobuf ``ExchangeCommitted``."""

from __future__ import annotations

from northpole.bus.stream import Message
from northpole.exchange.keys import EXCHANGE_COMMITTED
from northpole.exchange.service import ExchangeCommitted
from northpole.v1 import events_pb2


def exchange_event_message(event: object) -> Message | None:
    """Encode an :class:`ExchangeCommitted` (anything else on the subject is skipped).

    The message id names the exchange: it is committed once, so a second
    publish of the same commit is a duplicate.
    """
    if not isinstance(event, ExchangeCommitted):
        return None
    wire = events_pb2.ExchangeCommitted(
        exchange_id=event.exchange_id, year=event.year, participants=event.count
    )
    return Message(
        EXCHANGE_COMMITTED, wire.SerializeToString(), f"exchange-{event.exchange_id}-committed"
    )
