"""Fault tests of the NATS event stream: kill -9 of the server loses no acknowledged event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from nats_servers import NatsServer, free_port
from northpole.bus.nats import ENCODING_HEADER, JetStreamStream
from northpole.bus.outbox import OutboxRelay, OutboxRow
from northpole.bus.stream import Message
from northpole.core.errors import Unavailable

pytestmark = pytest.mark.integration


async def test_acknowledged_publishes_survive_kill_9_of_the_server(tmp_path: Path) -> None:
    """Every message whose publish returned is in the stream after SIGKILL and restart."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    try:
        stream = await JetStreamStream(server.url).open()
        sent = [Message("gift.created", f"g{i}".encode(), f"id-{i}") for i in range(2_000)]
        for start in range(0, len(sent), 500):
            assert await stream.publish(sent[start : start + 500]) == 500
        server.kill()
        await stream.close()
        server.start()
        reopened = await JetStreamStream(server.url).open()
        consumer = await reopened.consumer("check", subjects=["gift.>"])
        got: list[Message] = []
        while batch := await consumer.fetch(500, timeout_s=1):
            got += [d.message for d in batch]
            await consumer.ack(batch)
        await reopened.close()
        assert got == sent
    finally:
        server.stop()


async def test_large_payloads_are_stored_compressed(tmp_path: Path) -> None:
    """On NATS a payload above the threshold is stored zstd-compressed and marked so."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    try:
        stream = await JetStreamStream(server.url, compress_min_bytes=1_024).open()
        payload = b"a gift for every child " * 1_000
        await stream.publish(
            [Message("gift.created", payload, "big"), Message("gift.created", b"small", "s")]
        )
        js = stream._jetstream
        big = await js.get_msg(stream.stream, 1)
        small = await js.get_msg(stream.stream, 2)
        await stream.close()
        assert big.headers is not None and big.headers[ENCODING_HEADER] == "zstd"
        assert big.data is not None and len(big.data) < len(payload) // 10
        assert small.headers is not None and ENCODING_HEADER not in small.headers
    finally:
        server.stop()


class ListOutbox:
    """An outbox table in a list."""

    name = "gifts"

    def __init__(self, rows: Sequence[OutboxRow]) -> None:
        self.rows = list(rows)

    async def pending(self, limit: int) -> list[OutboxRow]:
        return self.rows[:limit]

    async def remove(self, ids: Sequence[int]) -> None:
        gone = set(ids)
        self.rows = [row for row in self.rows if row.id not in gone]


async def test_outbox_relay_rides_out_a_server_restart(tmp_path: Path) -> None:
    """A relay running while NATS is killed and restarted delivers every row exactly once."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    try:
        stream = await JetStreamStream(server.url, publish_timeout_s=1.0).open()
        rows = [OutboxRow(i, "gift.created", f"gift {i}".encode()) for i in range(1, 3_001)]
        outbox = ListOutbox(rows[:1_000])
        relay = OutboxRelay(outbox, stream, batch=200, idle_s=0.01, max_backoff_s=0.5)
        running = asyncio.create_task(relay.run())
        await asyncio.sleep(0.2)
        server.kill()
        outbox.rows += rows[1_000:]  # committed while the bus is down
        await asyncio.sleep(0.5)
        server.start()
        async with asyncio.timeout(30):
            while outbox.rows:
                await asyncio.sleep(0.05)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        consumer = await stream.consumer("check", subjects=["gift.>"])
        got: list[bytes] = []
        while batch := await consumer.fetch(1_000, timeout_s=1):
            got += [d.message.data for d in batch]
            await consumer.ack(batch)
        await stream.close()
        assert got == [row.data for row in rows]
    finally:
        server.stop()


async def test_a_message_no_stream_takes_is_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    """Publishing on a subject outside the stream raises Unavailable instead of returning."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    try:
        stream = await JetStreamStream(server.url, publish_timeout_s=2).open()
        with pytest.raises(Unavailable):
            await stream.publish([Message("elsewhere.thing", b"x", "lost-1")])
        assert await stream.publish([Message("gift.created", b"x", "kept-1")]) == 1
        await stream.close()
    finally:
        server.stop()
