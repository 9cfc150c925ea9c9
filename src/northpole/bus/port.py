"""The EventBus port and its in-process implementation.

Subjects are dotted names (``task.state_changed``); a subscription names a
subject or a prefix ending in ``>`` (``task.>``), as NATS does. Payloads are
Python objects in-process; the NATS adapter will carry protobuf.

The in-process bus never blocks a publisher: each subscription has a bounded
queue, and a subscriber that falls behind loses the oldest events (counted in
``Subscription.dropped``) rather than slowing the queue down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class EventBus(Protocol):
    """Publish events under subjects; subscribe by subject or prefix."""

    def publish(self, subject: str, events: Sequence[object]) -> None:
        """Hand ``events`` to every matching subscription, in order, without waiting."""
        ...

    def subscribe(self, pattern: str, *, capacity: int = 10_000) -> Subscription:
        """Start receiving events whose subject matches ``pattern``."""
        ...


@dataclass(eq=False)
class Subscription:
    """Events for one subscriber, read with ``async for``.

    Attributes:
        pattern: The subject or ``prefix.>`` it listens to.
        dropped: Events lost because the queue was full.
    """

    pattern: str
    capacity: int
    dropped: int = 0
    _queue: asyncio.Queue[tuple[str, object]] = field(init=False)
    _bus: InProcessBus | None = None

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.capacity)

    def matches(self, subject: str) -> bool:
        """Whether ``subject`` is one this subscription listens to."""
        if self.pattern.endswith(">"):
            return subject.startswith(self.pattern[:-1])
        return subject == self.pattern

    def offer(self, subject: str, event: object) -> None:
        """Queue an event, dropping the oldest if the queue is full."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((subject, event))

    async def get(self, timeout: float | None = None) -> tuple[str, object]:
        """Return the next ``(subject, event)``; raise TimeoutError after ``timeout`` s."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    def get_nowait(self) -> tuple[str, object]:
        """Return the next ``(subject, event)`` already queued; raise asyncio.QueueEmpty."""
        return self._queue.get_nowait()

    def pending(self) -> int:
        """How many events wait to be read."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop receiving."""
        if self._bus is not None:
            self._bus.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[tuple[str, object]]:
        while True:
            yield await self._queue.get()


class InProcessBus:
    """The embedded edition's bus: subscribers in the same process."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def publish(self, subject: str, events: Sequence[object]) -> None:
        """Hand ``events`` to every matching subscription."""
        for subscription in self._subscriptions:
            if subscription.matches(subject):
                for event in events:
                    subscription.offer(subject, event)

    def subscribe(self, pattern: str, *, capacity: int = 10_000) -> Subscription:
        """Return a new subscription to ``pattern``."""
        subscription = Subscription(pattern, capacity, _bus=self)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
