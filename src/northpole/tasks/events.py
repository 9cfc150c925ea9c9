"""Task events on the wire: :class:`TaskEvent` <-> protobuf ``TaskStateChanged``."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from northpole.bus.stream import Message
from northpole.tasks.model import TaskEvent, TaskState
from northpole.tasks.subjects import TASK_STATE_CHANGED
from northpole.v1 import task_pb2

#: TaskState -> the protobuf enum's value name.
_TO_WIRE = {state: f"TASK_STATE_{state.value}" for state in TaskState}


def task_event_message(event: TaskEvent) -> Message:
    """Encode ``event`` for the stream.

    The message id names the task, its attempt and the new state: one
    transition has one id however often it is sent, and two transitions never
    share one (a retried task reaches PENDING again with a higher attempt).
    """
    at = Timestamp()
    at.FromMilliseconds(event.at_ms)
    wire = task_pb2.TaskStateChanged(
        task_id=str(event.task_id),
        gift_id=str(event.gift_id),
        task_type=event.task_type,
        old_state=(
            _TO_WIRE[event.old_state] if event.old_state is not None else "TASK_STATE_UNSPECIFIED"
        ),
        new_state=_TO_WIRE[event.new_state],
        at=at,
        reason=event.reason or "",
        attempt=event.attempt,
    )
    msg_id = f"task-{event.task_id}-{event.attempt}-{event.new_state.value}"
    return Message(TASK_STATE_CHANGED, wire.SerializeToString(), msg_id)


def decode_task_event(data: bytes) -> task_pb2.TaskStateChanged:
    """Decode a ``task.state_changed`` payload."""
    wire = task_pb2.TaskStateChanged()
    wire.ParseFromString(data)
    return wire
