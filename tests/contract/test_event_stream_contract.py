"""The EventStream contract, run against the in-process stream and NATS JetStream."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from nats_servers import running_nats
from northpole.bus.memory import MemoryStream
from northpole.bus.nats import JetStreamStream
from northpole.bus.outbox import OutboxRelay, OutboxRow
from northpole.bus.stream import Delivery, EventStream, Message, subject_matches
from northpole.core.errors import InvalidInput, Unavailable

STREAMS = ["memory", pytest.param("nats", marks=pytest.mark.integration)]
ACK_WAIT_S = 1.0

Opener = Callable[[], Awaitable[EventStream]]


@pytest.fixture(params=STREAMS)
async def open_stream(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Open stream objects on one shared backing stream (a second object = another process)."""
    opened: list[EventStream] = []
    if request.param == "memory":
        shared = MemoryStream()

        async def open_memory() -> EventStream:
            return shared

        yield open_memory
        return
    with running_nats(tmp_path / "nats") as server:

        async def open_nats() -> EventStream:
            stream = await JetStreamStream(server.url).open()
            opened.append(stream)
            return stream

        try:
            yield open_nats
        finally:
            for stream in opened:
                await stream.close()


@pytest.fixture
async def stream(open_stream: Opener) -> EventStream:
    """The first stream object."""
    return await open_stream()


_ids = itertools.count(1)


def messages(subject: str, count: int) -> list[Message]:
    """``count`` messages on ``subject`` with fresh ids and distinct payloads."""
    return [Message(subject, f"{subject}#{i}".encode(), f"m-{next(_ids)}") for i in range(count)]


async def drain(consumer: object, *, timeout_s: float = 0.5) -> list[Delivery]:
    """Fetch (without acking) until a fetch comes back empty."""
    out: list[Delivery] = []
    while batch := await consumer.fetch(100, timeout_s=timeout_s):  # type: ignore[attr-defined]
        out += batch
    return out


async def test_published_messages_reach_a_consumer_in_order(stream: EventStream) -> None:
    """A consumer gets every message with its subject, data and id, in publish order."""
    sent = messages("gift.created", 5)
    assert await stream.publish(sent) == 5
    consumer = await stream.consumer("reader", subjects=["gift.>"])
    got = await drain(consumer)
    assert [d.message for d in got] == sent
    assert [d.sequence for d in got] == sorted(d.sequence for d in got)
    assert all(d.attempt == 1 for d in got)


async def test_large_payloads_arrive_unchanged(stream: EventStream) -> None:
    """A payload above the compression threshold reaches the consumer byte for byte."""
    big = Message("gift.created", bytes(range(256)) * 400 + b"tail", "big-1")
    assert await stream.publish([big]) == 1
    consumer = await stream.consumer("big", subjects=["gift.>"])
    [got] = await consumer.fetch(1, timeout_s=1)
    assert got.message == big


async def test_a_repeated_msg_id_is_stored_once(stream: EventStream) -> None:
    """Publishing a message id again (a relay's retry) adds nothing."""
    sent = messages("gift.created", 3)
    assert await stream.publish(sent) == 3
    assert await stream.publish([sent[1], *messages("gift.created", 1)]) == 1
    consumer = await stream.consumer("reader", subjects=["gift.>"])
    got = await drain(consumer)
    assert [d.message.msg_id for d in got] == [m.msg_id for m in sent] + [got[-1].message.msg_id]
    assert len(got) == 4


async def test_a_consumer_sees_only_its_subjects(stream: EventStream) -> None:
    """Subject filters with wildcards select what a consumer gets."""
    await stream.publish(messages("gift.created", 2) + messages("task.state_changed", 3))
    gifts = await stream.consumer("gifts", subjects=["gift.>"])
    tasks = await stream.consumer("tasks", subjects=["task.*"])
    assert {d.message.subject for d in await drain(gifts)} == {"gift.created"}
    assert len(await drain(tasks)) == 3


async def test_a_durable_consumer_resumes_after_its_last_ack(open_stream: Opener) -> None:
    """A consumer reopened by name (as after a restart) continues after what it acked."""
    first = await open_stream()
    await first.publish(messages("gift.created", 4))
    consumer = await first.consumer("billing", subjects=["gift.>"])
    batch = await consumer.fetch(2, timeout_s=1)
    await consumer.ack(batch)
    other = await open_stream()
    again = await other.consumer("billing", subjects=["gift.>"])
    rest = await drain(again)
    assert [d.message.data for d in rest] == [b"gift.created#2", b"gift.created#3"]


async def test_independent_consumers_each_get_everything(stream: EventStream) -> None:
    """Two durable consumers of one subject each receive every message."""
    await stream.publish(messages("exchange.committed", 3))
    one = await stream.consumer("one", subjects=["exchange.>"])
    two = await stream.consumer("two", subjects=["exchange.>"])
    assert len(await drain(one)) == 3
    assert len(await drain(two)) == 3


async def test_an_unacked_message_is_delivered_again(stream: EventStream) -> None:
    """A delivery not acked within ack_wait comes back with attempt 2; acked ones do not."""
    await stream.publish(messages("gift.status_changed", 2))
    consumer = await stream.consumer("slow", subjects=["gift.>"], ack_wait_s=ACK_WAIT_S)
    first = await consumer.fetch(2, timeout_s=1)
    await consumer.ack(first[:1])
    again = await consumer.fetch(2, timeout_s=ACK_WAIT_S * 4)
    assert [d.message for d in again] == [first[1].message]
    assert again[0].attempt == 2


async def test_fetch_waits_then_returns_nothing(stream: EventStream) -> None:
    """With nothing to deliver, fetch waits about its timeout and returns an empty list."""
    consumer = await stream.consumer("idle", subjects=["gift.>"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await consumer.fetch(10, timeout_s=0.3) == []
    assert loop.time() - start >= 0.2


async def test_fetch_wakes_when_a_message_arrives(stream: EventStream) -> None:
    """A waiting fetch returns soon after a publish, not at its timeout."""
    consumer = await stream.consumer("waiter", subjects=["gift.>"])
    waiting = asyncio.create_task(consumer.fetch(1, timeout_s=10))
    await asyncio.sleep(0.1)
    await stream.publish(messages("gift.created", 1))
    async with asyncio.timeout(5):
        got = await waiting
    assert len(got) == 1


async def test_bad_arguments_are_refused(stream: EventStream) -> None:
    """A nameless consumer or a fetch of zero is an InvalidInput naming the argument."""
    with pytest.raises(InvalidInput) as nameless:
        await stream.consumer("", subjects=["gift.>"])
    assert nameless.value.field == "durable"
    consumer = await stream.consumer("c", subjects=["gift.>"])
    with pytest.raises(InvalidInput) as zero:
        await consumer.fetch(0, timeout_s=0.1)
    assert zero.value.field == "limit"


class ListOutbox:
    """An outbox table in a list; ``fail_remove`` makes the next remove fail (a crash)."""

    name = "gifts"

    def __init__(self, rows: Sequence[OutboxRow]) -> None:
        self.rows = list(rows)
        self.fail_remove = False

    async def pending(self, limit: int) -> list[OutboxRow]:
        return self.rows[:limit]

    async def remove(self, ids: Sequence[int]) -> None:
        if self.fail_remove:
            self.fail_remove = False
            raise Unavailable("database went away")
        gone = set(ids)
        self.rows = [row for row in self.rows if row.id not in gone]


async def test_outbox_relay_moves_rows_once_even_when_it_crashes_midway(
    stream: EventStream,
) -> None:
    """Rows published but not removed (a crash) are published again and stored only once."""
    rows = [OutboxRow(i, "gift.created", f"gift {i}".encode()) for i in range(1, 8)]
    outbox = ListOutbox(rows)
    relay = OutboxRelay(outbox, stream, batch=3)
    outbox.fail_remove = True
    with pytest.raises(Unavailable):
        await relay.relay_once()  # published 1-3, but they are still in the outbox
    assert await relay.drain() == 7
    assert outbox.rows == []
    consumer = await stream.consumer("audit", subjects=["gift.>"])
    got = await drain(consumer)
    assert [d.message.data for d in got] == [row.data for row in rows]
    assert [d.message.msg_id for d in got] == [f"gifts-{i}" for i in range(1, 8)]


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("gift.>", "gift.created", True),
        ("gift.>", "gift", False),
        ("gift.*", "gift.created", True),
        ("gift.*", "gift.created.late", False),
        ("gift.created", "gift.created", True),
        ("gift.created", "gift.status_changed", False),
        ("*.created", "gift.created", True),
    ],
)
def test_subject_patterns_follow_nats_wildcards(pattern: str, subject: str, expected: bool) -> None:
    """'*' matches one token and '>' one or more, as in NATS."""
    assert subject_matches(pattern, subject) is expected
