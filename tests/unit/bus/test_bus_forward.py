"""The task event codec and the forwarder from the in-process bus to the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

from northpole.bus.forward import StreamForwarder
from northpole.bus.memory import MemoryStream
from northpole.bus.port import InProcessBus
from northpole.bus.stream import Message
from northpole.core.errors import Unavailable
from northpole.tasks.events import decode_task_event, task_event_message
from northpole.tasks.model import TaskEvent, TaskState
from northpole.tasks.subjects import TASK_STATE_CHANGED
from northpole.v1 import task_pb2


def event(task_id: int, new: TaskState, old: TaskState | None, attempt: int = 1) -> TaskEvent:
    """A task event at a fixed time."""
    return TaskEvent(
        task_id=task_id,
        gift_id=task_id * 10,
        task_type="wrap",
        old_state=old,
        new_state=new,
        at_ms=1_767_225_600_123,
        reason="handler_error" if new is TaskState.FAILED else None,
        attempt=attempt,
    )


def test_task_event_round_trips_through_protobuf() -> None:
    """Every field of a TaskEvent arrives in the decoded TaskStateChanged."""
    message = task_event_message(event(7, TaskState.FAILED, TaskState.IN_PROGRESS, attempt=3))
    assert message.subject == TASK_STATE_CHANGED
    wire = decode_task_event(message.data)
    assert (wire.task_id, wire.gift_id, wire.task_type) == ("7", "70", "wrap")
    assert wire.old_state == task_pb2.TASK_STATE_IN_PROGRESS
    assert wire.new_state == task_pb2.TASK_STATE_FAILED
    assert wire.at.ToMilliseconds() == 1_767_225_600_123
    assert (wire.reason, wire.attempt) == ("handler_error", 3)


def test_a_new_task_has_no_old_state_on_the_wire() -> None:
    """A submit (no old state) is encoded as UNSPECIFIED."""
    wire = decode_task_event(task_event_message(event(1, TaskState.PENDING, None)).data)
    assert wire.old_state == task_pb2.TASK_STATE_UNSPECIFIED


def test_message_ids_are_one_per_transition() -> None:
    """The same transition keeps its id; another attempt or state gets another."""
    first = task_event_message(event(1, TaskState.PENDING, TaskState.IN_PROGRESS, attempt=1))
    again = task_event_message(event(1, TaskState.PENDING, TaskState.IN_PROGRESS, attempt=1))
    retry = task_event_message(event(1, TaskState.PENDING, TaskState.IN_PROGRESS, attempt=2))
    done = task_event_message(event(1, TaskState.COMPLETED, TaskState.IN_PROGRESS, attempt=1))
    assert first.msg_id == again.msg_id
    assert len({first.msg_id, retry.msg_id, done.msg_id}) == 3


class FlakyStream(MemoryStream):
    """A memory stream whose first ``failures`` publishes raise Unavailable."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, messages: Sequence[Message]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise Unavailable("stream down")
        return await super().publish(messages)


async def test_forwarder_publishes_bus_events_and_retries_when_the_stream_is_down() -> None:
    """Events published on the bus reach the stream in order, after the stream recovers."""
    bus = InProcessBus()
    stream = FlakyStream(failures=2)
    forwarder = StreamForwarder(
        bus, stream, {TASK_STATE_CHANGED: task_event_message}, max_backoff_s=0.05
    )
    running = asyncio.create_task(forwarder.run())
    events = [event(i, TaskState.PENDING, None) for i in range(1, 51)]
    bus.publish(TASK_STATE_CHANGED, events)
    async with asyncio.timeout(5):
        while forwarder.forwarded < len(events):
            await asyncio.sleep(0.01)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    forwarder.close()
    consumer = await stream.consumer("check", subjects=["task.>"])
    got = await consumer.fetch(100, timeout_s=0.1)
    assert [decode_task_event(d.message.data).task_id for d in got] == [
        str(i) for i in range(1, 51)
    ]
    assert forwarder.dropped == 0


@pytest.mark.parametrize("skip", [True, False])
async def test_an_encoder_may_skip_events(skip: bool) -> None:
    """An encoder returning None keeps that event off the stream."""
    bus = InProcessBus()
    stream = MemoryStream()

    def encode(item: object) -> Message | None:
        return None if skip else Message("gift.created", b"x", "only")

    forwarder = StreamForwarder(bus, stream, {"gift.created": encode})
    running = asyncio.create_task(forwarder.run())
    bus.publish("gift.created", [object()])
    await asyncio.sleep(0.05)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert stream.last_seq == (0 if skip else 1)


class LosesCancels(MemoryStream):
    """A memory stream whose publish loses a cancel that lands in it, as a driver can on
    Python 3.11 (asyncio.wait_for's race; see northpole.core.lifecycle)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def publish(self, messages: Sequence[Message]) -> int:
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        return await super().publish(messages)


async def test_a_forwarder_cancelled_while_its_stream_loses_the_cancel_still_stops() -> None:
    """One cancel landing in a publish that swallows it ends the forwarder anyway."""
    bus = InProcessBus()
    stream = LosesCancels()
    forwarder = StreamForwarder(bus, stream, {TASK_STATE_CHANGED: task_event_message})
    running = asyncio.create_task(forwarder.run())
    bus.publish(TASK_STATE_CHANGED, [event(1, TaskState.PENDING, None)])
    await stream.entered.wait()
    running.cancel()
    done, _ = await asyncio.wait({running}, timeout=2)
    assert done == {running}
    forwarder.close()
