"""The transactional outbox: a database write and its event both happen, or neither.

A part that must publish an event about a change (the gift registry) writes
the event as a row of an *outbox table* in the same database transaction as
the change. An :class:`OutboxRelay` then moves rows to the
:class:`~northpole.bus.stream.EventStream`::

    change + outbox row --(one transaction)--> database
    relay: read oldest rows -> publish (msg_id = row id) -> delete the rows

If the process dies between the publish and the delete, the rows are published
again after restart under the same ``msg_id``, and the stream drops the
duplicates: no event is lost (the row is only deleted once the stream
acknowledged it) and none is invented (no row without its committed change).
Several relays on one table are safe, for the same reason, though one is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from northpole.bus.stream import EventStream, Message
from northpole.core.errors import Unavailable
from northpole.core.logging import get_logger

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting in an outbox table.

    Attributes:
        id: The row's id, increasing in commit order within one table.
        subject: Where it goes.
        data: The encoded event.
    """

    id: int
    subject: str
    data: bytes


class OutboxSource(Protocol):
    """An outbox table, as the relay sees it."""

    @property
    def name(self) -> str:
        """Names the table in message ids (``<name>-<row id>``), unique per outbox."""
        ...

    async def pending(self, limit: int) -> list[OutboxRow]:
        """Return up to ``limit`` of the oldest rows."""
        ...

    async def remove(self, ids: Sequence[int]) -> None:
        """Delete published rows."""
        ...


class OutboxRelay:
    """Moves outbox rows to the stream, oldest first, in batches.

    Args:
        source: The outbox table.
        stream: Where events go.
        batch: Most rows per publish.
        idle_s: Pause after finding nothing (also the longest wait after :meth:`wake`
            is missed).
        max_backoff_s: Longest pause after a failure.
    """

    def __init__(
        self,
        source: OutboxSource,
        stream: EventStream,
        *,
        batch: int = 1_000,
        idle_s: float = 0.05,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.source = source
        self.stream = stream
        self.batch = batch
        self.idle_s = idle_s
        self.max_backoff_s = max_backoff_s
        self.relayed = 0
        self._wake = asyncio.Event()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    def message_id(self, row: OutboxRow) -> str:
        """The de-duplication id of ``row``'s event."""
        return f"{self.source.name}-{row.id}"

    def wake(self) -> None:
        """Tell the relay new rows were committed (saves waiting for the next poll)."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Move one batch; return how many rows were moved (0: the outbox was empty)."""
        rows = await self.source.pending(self.batch)
        if not rows:
            return 0
        messages = [Message(row.subject, row.data, self.message_id(row)) for row in rows]
        await self.stream.publish(messages)
        await self.source.remove([row.id for row in rows])
        self.relayed += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Move every row present now; return how many."""
        total = 0
        while moved := await self.relay_once():
            total += moved
        return total

    async def run(self) -> None:
        """Relay until cancelled; failures are logged and retried with backoff."""
        failures = 0
        while True:
            self._wake.clear()
            try:
                moved = await self.relay_once()
            except Unavailable as exc:
                failures += 1
                delay = min(self.max_backoff_s, 0.1 * 2**failures) * self._rng.uniform(0.5, 1)
                _log.warning("outbox relay failed; retrying", error=str(exc), in_s=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            failures = 0
            if moved < self.batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_s):
                        await self._wake.wait()
