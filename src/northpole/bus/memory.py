"""The embedded edition's event stream: in the process, with the stream's semantics.

It behaves like the JetStream adapter (de-duplication by ``msg_id``, durable
consumers with acknowledgements and redelivery after ``ack_wait_s``) so the
same code and the same contract suite run on both. It lives and dies with the
process: in the embedded edition producers and consumers share that process,
and the outbox rows that feed it are in the database until relayed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from northpole.bus.stream import Delivery, Message, subject_matches
from northpole.core.errors import InvalidInput


@dataclass(slots=True)
class _Pending:
    deadline: float
    attempt: int


@dataclass(eq=False)
class MemoryConsumer:
    """A durable consumer of a :class:`MemoryStream`."""

    stream: MemoryStream
    name: str
    subjects: tuple[str, ...]
    ack_wait_s: float
    next_seq: int = 1
    pending: dict[int, _Pending] = field(default_factory=dict)

    def wants(self, subject: str) -> bool:
        """Whether this consumer's subjects include ``subject``."""
        return any(subject_matches(pattern, subject) for pattern in self.subjects)

    async def fetch(self, limit: int, *, timeout_s: float) -> list[Delivery]:
        """Return up to ``limit`` deliveries (redeliveries first), waiting for the first."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", field="limit")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, timeout_s)
        while True:
            waiter = self.stream.changed
            out = self._take(limit)
            if out or loop.time() >= give_up:
                return out
            wait = give_up - loop.time()
            if self.pending:  # wake for the earliest redelivery too
                soonest = min(p.deadline for p in self.pending.values())
                wait = min(wait, max(0.0, soonest - self.stream.now()))
            try:
                async with asyncio.timeout(wait):
                    await waiter.wait()
            except TimeoutError:
                pass

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget delivered messages: they are not delivered again."""
        for delivery in deliveries:
            self.pending.pop(delivery.sequence, None)

    def _take(self, limit: int) -> list[Delivery]:
        now = self.stream.now()
        out: list[Delivery] = []
        for seq, state in sorted(self.pending.items()):
            if len(out) >= limit:
                return out
            message = self.stream.get(seq)
            if message is None:  # trimmed from the stream meanwhile
                del self.pending[seq]
            elif state.deadline <= now:
                state.attempt += 1
                state.deadline = now + self.ack_wait_s
                out.append(Delivery(message, seq, state.attempt, (self.name, seq)))
        while len(out) < limit and self.next_seq <= self.stream.last_seq:
            seq = self.next_seq
            self.next_seq += 1
            message = self.stream.get(seq)
            if message is not None and self.wants(message.subject):
                self.pending[seq] = _Pending(now + self.ack_wait_s, 1)
                out.append(Delivery(message, seq, 1, (self.name, seq)))
        return out


class MemoryStream:
    """An in-process :class:`~northpole.bus.stream.EventStream`.

    Args:
        max_messages: Oldest messages beyond this many are dropped.
        duplicate_window: How many recent ``msg_id`` s are remembered for de-duplication.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        *,
        max_messages: int = 1_000_000,
        duplicate_window: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.duplicate_window = duplicate_window
        self.now = clock
        self.first_seq = 1
        self.last_seq = 0
        self.changed = asyncio.Event()
        self._messages: deque[Message] = deque()
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._consumers: dict[str, MemoryConsumer] = {}

    def get(self, seq: int) -> Message | None:
        """The message at ``seq``, or ``None`` if trimmed or not yet there."""
        if seq < self.first_seq or seq > self.last_seq:
            return None
        return self._messages[seq - self.first_seq]

    async def publish(self, messages: Sequence[Message]) -> int:
        """Store new messages in order; drop those whose ``msg_id`` was seen."""
        added = 0
        for message in messages:
            if message.msg_id in self._seen:
                continue
            self._messages.append(message)
            self.last_seq += 1
            added += 1
            self._seen[message.msg_id] = self.last_seq
            if len(self._seen) > self.duplicate_window:
                self._seen.popitem(last=False)
            if len(self._messages) > self.max_messages:
                self._messages.popleft()
                self.first_seq += 1
        if added:
            self.changed.set()
            self.changed = asyncio.Event()
        return added

    async def consumer(
        self, durable: str, *, subjects: Sequence[str], ack_wait_s: float = 30.0
    ) -> MemoryConsumer:
        """Return the durable consumer ``durable`` (created with ``subjects`` on first use)."""
        if not durable:
            raise InvalidInput("a durable consumer needs a name", field="durable")
        found = self._consumers.get(durable)
        if found is None:
            found = MemoryConsumer(self, durable, tuple(subjects), ack_wait_s, self.first_seq)
            self._consumers[durable] = found
        return found

    async def close(self) -> None:
        """Nothing to release."""
