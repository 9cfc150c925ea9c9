"""The events part: task and exchange events published in-process reach the stream."""

from __future__ import annotations

import asyncio

from northpole.bus.memory import MemoryStream
from northpole.bus.part import EventsPart, build_stream
from northpole.bus.port import InProcessBus
from northpole.core.settings import BusSettings
from northpole.exchange.keys import EXCHANGE_COMMITTED
from northpole.exchange.service import ExchangeCommitted
from northpole.system import FORWARDED
from northpole.tasks.events import decode_task_event
from northpole.tasks.model import TaskEvent, TaskState
from northpole.tasks.subjects import TASK_STATE_CHANGED
from northpole.v1 import events_pb2


def test_the_stream_is_in_process_unless_nats_is_configured() -> None:
    """Without bus.nats_url the embedded edition's in-process stream is used."""
    assert isinstance(build_stream(BusSettings()), MemoryStream)


async def test_events_part_forwards_task_and_exchange_events_while_running() -> None:
    """Between start and stop, bus events land on the stream as protobuf, then it is ready."""
    bus, stream = InProcessBus(), MemoryStream()
    part = EventsPart(stream, bus, FORWARDED)
    assert not part.readiness().ready
    async with part.lifespan():
        assert part.readiness().ready
        bus.publish(
            TASK_STATE_CHANGED,
            [TaskEvent(5, 50, "wrap", TaskState.IN_PROGRESS, TaskState.COMPLETED, 1_000, None, 1)],
        )
        bus.publish(EXCHANGE_COMMITTED, [ExchangeCommitted("77", 2026, 30)])
        consumer = await stream.consumer("check", subjects=["task.>", "exchange.>"])
        got = []
        async with asyncio.timeout(5):
            while len(got) < 2:
                got += await consumer.fetch(10, timeout_s=0.1)
    assert not part.readiness().ready
    by_subject = {d.message.subject: d.message for d in got}
    assert decode_task_event(by_subject[TASK_STATE_CHANGED].data).task_id == "5"
    committed = events_pb2.ExchangeCommitted()
    committed.ParseFromString(by_subject[EXCHANGE_COMMITTED].data)
    assert (committed.exchange_id, committed.year, committed.participants) == ("77", 2026, 30)
    assert by_subject[EXCHANGE_COMMITTED].msg_id == "exchange-77-committed"
