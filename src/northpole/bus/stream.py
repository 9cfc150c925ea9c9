"""The EventStream port: durable, acknowledged events with de-duplication.

Where :class:`northpole.bus.port.EventBus` hands Python objects to subscribers
in the same process as they happen, an :class:`EventStream` keeps encoded
events (protobuf bytes) for consumers anywhere:

* :meth:`EventStream.publish` returns once the stream has stored every message
  (an acknowledged publish is never lost) and drops a message whose ``msg_id``
  it has already stored within its de-duplication window, so a publisher that
  retries after a crash does not create a phantom second event.
* A named *durable consumer* remembers how far it got: :meth:`Consumer.fetch`
  hands out messages not yet acknowledged, and one fetched but not acknowledged
  within ``ack_wait_s`` is delivered again (at-least-once; consumers are
  idempotent, using ``msg_id``).

Implementations: :class:`northpole.bus.memory.MemoryStream` (embedded edition,
in the process) and :class:`northpole.bus.nats.JetStreamStream` (cluster
edition, NATS JetStream). One contract suite runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """One event as the stream carries it.

    Attributes:
        subject: A subject of :mod:`northpole.bus.subjects`.
        data: The encoded event (protobuf).
        msg_id: Unique per event; a second publish with the same id is dropped.
    """

    subject: str
    data: bytes
    msg_id: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a consumer, to acknowledge once handled.

    Attributes:
        message: The event.
        sequence: Its position in the stream (increasing).
        attempt: 1 on the first delivery, more on redeliveries.
        token: What :meth:`Consumer.ack` needs to find it again.
    """

    message: Message
    sequence: int
    attempt: int
    token: object


class Consumer(Protocol):
    """A durable consumer of some subjects."""

    async def fetch(self, limit: int, *, timeout_s: float) -> list[Delivery]:
        """Return up to ``limit`` deliveries, waiting up to ``timeout_s`` for the first."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge handled deliveries: they will not be delivered again."""
        ...


class EventStream(Protocol):
    """Stores events durably and hands them to durable consumers."""

    async def publish(self, messages: Sequence[Message]) -> int:
        """Store ``messages`` in order; return how many were new (not duplicates).

        Raises:
            Unavailable: The stream could not confirm every message; the caller
                retries (duplicates of the ones that did land are dropped).
        """
        ...

    async def consumer(
        self, durable: str, *, subjects: Sequence[str], ack_wait_s: float = 30.0
    ) -> Consumer:
        """Return the durable consumer ``durable`` (created on first use) of ``subjects``.

        ``subjects`` may use NATS wildcards (``gift.>``, ``task.*``).
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches a NATS ``pattern`` (``*`` one token, ``>`` the rest)."""
    want = pattern.split(".")
    have = subject.split(".")
    for index, part in enumerate(want):
        if part == ">":
            return len(have) > index
        if index >= len(have) or (part != "*" and part != have[index]):
            return False
    return len(want) == len(have)
