"""A worker on the Redis queue puts its task events on NATS, as ``northpole up`` does.

A direct worker (``NORTHPOLE_TASKS__REDIS_URL``) makes the claims and the
completions itself; with ``NORTHPOLE_BUS__NATS_URL`` set its
``task.state_changed`` events must reach the stream, where the registry
follows them. Real ``redis-server``, ``nats-server`` and ``northpole worker``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nats_servers import running_nats
from northpole.bus.nats import JetStreamStream
from northpole.core.settings import Settings
from northpole.tasks.events import decode_task_event
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_store import RedisTaskStore
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import partition_of
from northpole.v1 import task_pb2
from redis_servers import start_redis

pytestmark = pytest.mark.integration

HANDLERS = """
from northpole.tasks.handlers import TaskRegistry

registry = TaskRegistry()


@registry.handler("wrap")
async def wrap(ctx):
    return "wrapped"
"""
NOW = 1_767_225_600_000
TASKS = 20


def _tasks(partitions: int) -> list[Task]:
    return [
        Task(
            id=5_000 + k,
            gift_id=7_000 + k,
            task_type="wrap",
            priority=0,
            dependencies=(),
            max_retries=0,
            deadline_ms=None,
            metadata={},
            idempotency_key=None,
            partition=partition_of(7_000 + k, partitions),
            state=TaskState.PENDING,
            created_ms=NOW,
            updated_ms=NOW,
            available_ms=NOW,
        )
        for k in range(TASKS)
    ]


async def _submit_and_wait(url: str, partitions: int, timeout_s: float) -> list[Task]:
    store = RedisTaskStore(url, partitions=partitions, aging_ms=1_000, policy=RetryPolicy())
    async with store:
        tasks = _tasks(partitions)
        await store.submit(tasks, now_ms=int(time.time() * 1000))
        deadline = time.monotonic() + timeout_s
        while True:
            done = [await store.get(t.id) for t in tasks]
            if all(t.state is TaskState.COMPLETED for t in done) or time.monotonic() > deadline:
                return done
            await asyncio.sleep(0.1)


async def _task_events(url: str) -> list[tuple[int, str]]:
    stream = await JetStreamStream(url).open()
    try:
        consumer = await stream.consumer("worker-events", subjects=["task.state_changed"])
        seen: list[tuple[int, str]] = []
        while batch := await consumer.fetch(1_000, timeout_s=1):
            for delivery in batch:
                wire = decode_task_event(delivery.message.data)
                state = task_pb2.TaskState.Name(wire.new_state).removeprefix("TASK_STATE_")
                seen.append((int(wire.task_id), state))
            await consumer.ack(batch)
        return seen
    finally:
        await stream.close()


def test_a_worker_on_redis_puts_its_task_events_on_nats(tmp_path: Path) -> None:
    """Every task the worker completes has its COMPLETED event on the stream."""
    partitions = Settings().tasks.partitions
    redis = start_redis(tmp_path / "redis")
    try:
        with running_nats(tmp_path / "nats") as nats:
            (tmp_path / "mods").mkdir()
            (tmp_path / "mods" / "elf_events.py").write_text(HANDLERS, encoding="utf-8")
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(tmp_path / "mods"), os.environ.get("PYTHONPATH")])
                ),
                "NORTHPOLE_DATA_DIR": str(tmp_path / "data"),
                "NORTHPOLE_TASKS__REDIS_URL": redis.url,
                "NORTHPOLE_BUS__NATS_URL": nats.url,
            }
            argv = [sys.executable, "-m", "northpole", "worker", "elf_events:registry"]
            with (tmp_path / "worker.log").open("wb") as log:
                worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                done = asyncio.run(_submit_and_wait(redis.url, partitions, 30.0))
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    code = worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                    code = None
                assert code == 0, (tmp_path / "worker.log").read_text()
            assert [t.state for t in done] == [TaskState.COMPLETED] * TASKS
            events = asyncio.run(_task_events(nats.url))
    finally:
        redis.stop()
    completed = {task_id for task_id, state in events if state == "COMPLETED"}
    assert completed == {t.id for t in done}
    assert {task_id for task_id, state in events if state == "ASSIGNED"} == completed
