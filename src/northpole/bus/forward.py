"""Forward events from the in-process bus to the event stream.

Parts publish Python objects on the :class:`~northpole.bus.port.EventBus` as
things happen; a :class:`StreamForwarder` encodes those of some subjects and
publishes them to an :class:`~northpole.bus.stream.EventStream` in batches,
retrying while the stream is unreachable. It is for events whose change is
not in a database transaction of ours (the task queue's transitions, which
live in SQLite or Redis): the de-duplication ids make its retries safe, but an
event still in its buffer when the process dies is not sent. Changes that must
never lose their event use the transactional outbox (:mod:`northpole.bus.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping

from northpole.bus.port import EventBus, Subscription
from northpole.bus.stream import EventStream, Message
from northpole.core.errors import Unavailable
from northpole.core.lifecycle import check_cancelled, stop_tasks
from northpole.core.logging import get_logger

_log = get_logger(__name__)

Encoder = Callable[[object], Message | None]


class StreamForwarder:
    """Encodes bus events and publishes them to the stream.

    Args:
        bus: Where events come from.
        stream: Where they go.
        encoders: Subject -> encoder (``None`` from an encoder skips the event).
        batch: Most events per publish.
        capacity: Events buffered per subject; beyond that the oldest are dropped
            (counted in :attr:`dropped` via the subscription).
    """

    def __init__(
        self,
        bus: EventBus,
        stream: EventStream,
        encoders: Mapping[str, Encoder],
        *,
        batch: int = 1_000,
        capacity: int = 100_000,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.stream = stream
        self.batch = batch
        self.max_backoff_s = max_backoff_s
        self.forwarded = 0
        self._encoders = dict(encoders)
        self._subscriptions = [bus.subscribe(subject, capacity=capacity) for subject in encoders]
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._publishing = 0

    @property
    def dropped(self) -> int:
        """Events lost because the stream stayed unreachable while the buffer filled."""
        return sum(s.dropped for s in self._subscriptions)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every event received so far is published (or ``timeout_s`` passed);
        return whether all were. For a process about to stop (``run`` must be running)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._publishing or any(s.pending() for s in self._subscriptions):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop receiving bus events."""
        for subscription in self._subscriptions:
            subscription.close()

    async def run(self) -> None:
        """Forward until cancelled."""
        readers = [asyncio.create_task(self._forward(s)) for s in self._subscriptions]
        try:
            await asyncio.gather(*readers)
        finally:
            await stop_tasks(*readers)

    async def _forward(self, subscription: Subscription) -> None:
        encode = self._encoders[subscription.pattern]
        while True:
            _, event = await subscription.get()
            self._publishing += 1
            try:
                messages = [m for m in (encode(event),) if m is not None]
                while len(messages) < self.batch and subscription.pending():
                    _, more = subscription.get_nowait()  # no await per event: they are queued
                    if (message := encode(more)) is not None:
                        messages.append(message)
                await self._publish(messages)
            finally:
                self._publishing -= 1
            check_cancelled()  # a cancel the driver lost (core.lifecycle)

    async def _publish(self, messages: list[Message]) -> None:
        failures = 0
        while messages:
            try:
                await self.stream.publish(messages)
            except Unavailable as exc:
                check_cancelled()
                failures += 1
                delay = min(self.max_backoff_s, 0.1 * 2**failures) * self._rng.uniform(0.5, 1)
                _log.warning("event forward failed; retrying", error=str(exc), in_s=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            self.forwarded += len(messages)
            return


#: How long a stopping process waits for its buffered events to reach the stream.
FLUSH_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def forwarding(
    bus: EventBus,
    stream: EventStream,
    encoders: Mapping[str, Encoder],
    *,
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
) -> AsyncIterator[StreamForwarder]:
    """Forward ``encoders``' subjects from ``bus`` to ``stream`` while the block runs.

    On the way out, what was received is published first (up to
    ``flush_timeout_s``, with a warning if some is left), then the forwarder
    stops. The stream's own lifecycle belongs to the caller.
    """
    forwarder = StreamForwarder(bus, stream, encoders)
    running = asyncio.create_task(forwarder.run(), name="northpole-event-forwarder")
    try:
        yield forwarder
    finally:
        if not running.done() and not await forwarder.flush(flush_timeout_s):
            _log.warning("events not all forwarded before stopping", timeout_s=flush_timeout_s)
        await stop_tasks(running)
        forwarder.close()
