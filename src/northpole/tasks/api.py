"""HTTP routes of the task queue: parse, call the service, serialise.

Task ids and gift ids travel as decimal strings; times as RFC 3339 UTC with
milliseconds. Submitters (operator) and workers (worker) have their own routes;
admin may call everything.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from starlette.responses import Response

from northpole.core.app import json_response
from northpole.core.auth import Role, require_roles
from northpole.core.errors import InvalidInput, NorthpoleError
from northpole.core.validation import load_json, parse_body, validate
from northpole.idgen import parse_id
from northpole.tasks.model import (
    MAX_BATCH,
    MAX_HELD,
    MAX_METADATA_BYTES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Task,
    TaskSpec,
    TaskState,
)
from northpole.tasks.service import SubmitItem
from northpole.tasks.store import Claim, CompleteRequest, Heartbeat

if TYPE_CHECKING:
    from northpole.tasks.service import QueuesReport, TaskService

_WORKER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def _decimal_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a decimal id string")
    try:
        return parse_id(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from exc


DecimalId = Annotated[int, BeforeValidator(_decimal_id)]


class TaskIn(BaseModel):
    """One task to submit."""

    model_config = ConfigDict(extra="forbid")

    gift_id: DecimalId = Field(description="The gift this task works on (decimal string).")
    task_type: StrictStr = Field(min_length=1, max_length=100)
    priority: StrictInt = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    dependencies: list[StrictStr] = Field(default_factory=list, max_length=1000)
    ref: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    max_retries: StrictInt = Field(default=3, ge=0, le=100)
    deadline: AwareDatetime | None = None
    metadata: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    idempotency_key: StrictStr | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes; at most {MAX_METADATA_BYTES} allowed")
        return value

    def to_item(self) -> SubmitItem:
        """Return the service's view of this task."""
        deadline_ms = None if self.deadline is None else int(self.deadline.timestamp() * 1000)
        spec = TaskSpec(
            gift_id=self.gift_id,
            task_type=self.task_type,
            priority=self.priority,
            max_retries=self.max_retries,
            deadline_ms=deadline_ms,
            metadata=self.metadata,
            idempotency_key=self.idempotency_key,
        )
        return SubmitItem(spec=spec, dependencies=tuple(self.dependencies), ref=self.ref)


class SubmitBatch(BaseModel):
    """Many tasks, stored all or none."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_BATCH)


class ClaimIn(BaseModel):
    """A worker asking for tasks."""

    model_config = ConfigDict(extra="forbid")

    group: StrictStr = Field(default="default", min_length=1, max_length=100)
    task_types: list[StrictStr] = Field(default_factory=list, max_length=1000)
    limit: StrictInt = Field(default=1, ge=1, le=1000)
    wait_s: float = Field(default=0.0, ge=0, le=30)
    lease_s: float | None = Field(default=None, ge=1, le=3600)


class HeldTask(BaseModel):
    """A task a worker holds, with the fence it was given."""

    model_config = ConfigDict(extra="forbid")

    id: DecimalId
    fence: StrictInt = Field(ge=0)


class HeartbeatIn(BaseModel):
    """A worker's heartbeat."""

    model_config = ConfigDict(extra="forbid")

    group: StrictStr = Field(default="default", min_length=1, max_length=100)
    task_types: list[StrictStr] = Field(default_factory=list, max_length=1000)
    concurrency: StrictInt = Field(default=1, ge=1, le=100_000)
    started: list[HeldTask] = Field(default_factory=list, max_length=MAX_HELD)
    holding: list[HeldTask] = Field(default_factory=list, max_length=MAX_HELD)
    lease_s: float | None = Field(default=None, ge=1, le=3600)


class CompleteIn(BaseModel):
    """The holder reports success."""

    model_config = ConfigDict(extra="forbid")

    worker_id: StrictStr = Field(min_length=1, max_length=128)
    fence: StrictInt = Field(ge=0)
    result: StrictStr | None = Field(default=None, max_length=65_536)


class FailIn(BaseModel):
    """The holder reports a failed attempt."""

    model_config = ConfigDict(extra="forbid")

    worker_id: StrictStr = Field(min_length=1, max_length=128)
    fence: StrictInt = Field(ge=0)
    error: StrictStr = Field(default="", max_length=8_192)
    retry: StrictBool = True
    retry_delay_s: float | None = Field(default=None, ge=0, le=86_400)


class AckComplete(BaseModel):
    """One completion in a batch acknowledgement."""

    model_config = ConfigDict(extra="forbid")

    id: DecimalId
    fence: StrictInt = Field(ge=0)
    result: StrictStr | None = Field(default=None, max_length=65_536)


class AckFail(BaseModel):
    """One failure in a batch acknowledgement."""

    model_config = ConfigDict(extra="forbid")

    id: DecimalId
    fence: StrictInt = Field(ge=0)
    error: StrictStr = Field(default="", max_length=8_192)
    retry: StrictBool = True
    retry_delay_s: float | None = Field(default=None, ge=0, le=86_400)


class AckIn(BaseModel):
    """Many acknowledgements at once; each succeeds or fails on its own."""

    model_config = ConfigDict(extra="forbid")

    completed: list[AckComplete] = Field(default_factory=list, max_length=10_000)
    failed: list[AckFail] = Field(default_factory=list, max_length=10_000)


def _time(ms: int | None) -> str | None:
    if ms is None:
        return None
    return f"{_second(ms // 1000)}{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of a Unix second (cached: the tasks of one answer share a few)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def task_json(task: Task) -> dict[str, Any]:
    """Return the wire form of a task."""
    return {
        "id": str(task.id),
        "gift_id": str(task.gift_id),
        "task_type": task.task_type,
        "priority": task.priority,
        "dependencies": [str(d) for d in task.dependencies],
        "retry_count": task.retry_count,
        "max_retries": task.max_retries,
        "deadline": _time(task.deadline_ms),
        "metadata": task.metadata,
        "idempotency_key": task.idempotency_key,
        "state": task.state.value,
        "attempts": task.attempts,
        "partition": task.partition,
        "fence": task.fence,
        "worker_id": task.worker_id,
        "created_at": _time(task.created_ms),
        "updated_at": _time(task.updated_ms),
        "available_at": _time(task.available_ms),
        "started_at": _time(task.started_ms),
        "finished_at": _time(task.finished_ms),
        "lease_until": _time(task.lease_until_ms),
        "last_error": task.last_error,
        "result": task.result,
    }


def queues_json(report: QueuesReport) -> dict[str, Any]:
    """Return the wire form of the queues report."""
    stats = report.stats
    return {
        "partitions": report.partitions,
        "depths": [
            {
                "task_type": row.task_type,
                "priority": row.priority,
                "partition": row.partition,
                "state": row.state.value,
                "count": row.count,
            }
            for row in stats.depths
        ],
        "oldest_pending_age_s": {
            task_type: max(0, report.now_ms - oldest) / 1000
            for task_type, oldest in stats.oldest_pending_ms.items()
        },
        "recent_processing_s": stats.recent_processing_s,
        "groups": [
            {
                "group": g.group,
                "workers": g.workers,
                "task_types": list(g.task_types),
                "depth": g.depth,
                "avg_processing_s": g.avg_processing_s,
                "desired_workers": g.desired_workers,
            }
            for g in report.groups
        ],
    }


def _task_id(text: str) -> int:
    return parse_id(text)


def _worker_id(text: str) -> str:
    if not _WORKER_ID.match(text):
        raise InvalidInput(
            "worker_id must be 1-128 letters, digits or . _ : @ -", field="worker_id"
        )
    return text


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


TaskIdPath = Annotated[str, Path(alias="id", description="A task id (decimal).")]
WorkerIdPath = Annotated[str, Path(description="The worker's id.")]


def build_router(service: TaskService) -> APIRouter:  # noqa: C901 - one closure per route
    """Return the task queue's routes."""
    router = APIRouter(prefix="/api/v1", tags=["tasks"])
    submitters = require_roles(Role.OPERATOR, Role.WORKER)
    operators = require_roles(Role.OPERATOR)
    workers = require_roles(Role.WORKER)
    readers = require_roles(Role.OPERATOR, Role.WORKER)
    default_lease_ms = service.settings.lease_ms

    @router.post("/tasks", status_code=201, dependencies=[submitters], summary="Submit tasks")
    async def submit(request: Request) -> Response:
        data = load_json(await request.body())
        if isinstance(data, dict) and "tasks" in data:
            batch = validate(data, SubmitBatch)
            stored = await service.submit([t.to_item() for t in batch.tasks])
            return json_response({"tasks": [task_json(t) for t in stored]}, 201)
        one = validate(data, TaskIn)
        stored = await service.submit([one.to_item()])
        return json_response(task_json(stored[0]), 201)

    @router.get("/tasks/{id}", dependencies=[readers], summary="Read a task")
    async def get_task(task_id: TaskIdPath) -> Response:
        return json_response(task_json(await service.get(_task_id(task_id))))

    @router.post("/tasks/{id}/cancel", dependencies=[operators], summary="Cancel a task")
    async def cancel(task_id: TaskIdPath) -> Response:
        return json_response(task_json(await service.cancel(_task_id(task_id))))

    @router.post("/tasks/{id}/retry", dependencies=[operators], summary="Re-drive a FAILED task")
    async def retry(task_id: TaskIdPath) -> Response:
        return json_response(task_json(await service.redrive(_task_id(task_id))))

    @router.get("/queues", dependencies=[readers], summary="Queue depths and autoscaling signal")
    async def queues() -> Response:
        return json_response(queues_json(await service.queues()))

    @router.post("/workers/{worker_id}/claim", dependencies=[workers], summary="Claim tasks")
    async def claim(worker_id: WorkerIdPath, request: Request) -> Response:
        raw = await request.body()
        body = parse_body(raw, ClaimIn) if raw.strip() else ClaimIn()
        tasks, partitions = await service.claim(
            Claim(
                worker_id=_worker_id(worker_id),
                group=body.group,
                task_types=frozenset(body.task_types),
                limit=body.limit,
                lease_ms=_ms(body.lease_s) or default_lease_ms,
            ),
            wait_s=body.wait_s,
            gone=request.is_disconnected,
        )
        return json_response({"tasks": [task_json(t) for t in tasks], "partitions": partitions})

    @router.post("/workers/{worker_id}/heartbeat", dependencies=[workers], summary="Heartbeat")
    async def heartbeat(worker_id: WorkerIdPath, request: Request) -> Response:
        raw = await request.body()
        body = parse_body(raw, HeartbeatIn) if raw.strip() else HeartbeatIn()
        answer = await service.heartbeat(
            Heartbeat(
                worker_id=_worker_id(worker_id),
                group=body.group,
                task_types=frozenset(body.task_types),
                concurrency=body.concurrency,
                started=tuple((t.id, t.fence) for t in body.started),
                holding=tuple((t.id, t.fence) for t in body.holding),
                lease_ms=_ms(body.lease_s) or default_lease_ms,
            )
        )
        return json_response(
            {"cancel": [str(t) for t in answer.cancel], "partitions": list(answer.partitions)}
        )

    @router.post("/workers/{worker_id}/ack", dependencies=[workers], summary="Acknowledge many")
    async def ack(worker_id: WorkerIdPath, request: Request) -> Response:
        body = parse_body(await request.body(), AckIn)
        wid = _worker_id(worker_id)
        # Completions in one store call (one transaction, or one script per partition);
        # failures concurrently (the store writes concurrent calls together).
        done: list[TaskState | NorthpoleError]
        try:
            done = await service.complete_many(
                [CompleteRequest(d.id, wid, d.fence, d.result) for d in body.completed]
            )
        except NorthpoleError as exc:  # each item reports it, as when acked one by one
            done = [exc] * len(body.completed)
        outcomes = [
            _outcome(
                failed.id,
                service.fail(
                    failed.id,
                    worker_id=wid,
                    fence=failed.fence,
                    error=failed.error,
                    retry=failed.retry,
                    delay_ms=_ms(failed.retry_delay_s),
                ),
            )
            for failed in body.failed
        ]
        results = [_result(d.id, state) for d, state in zip(body.completed, done, strict=True)]
        results += await asyncio.gather(*outcomes)
        return json_response({"results": results})

    @router.post("/tasks/{id}/complete", dependencies=[workers], summary="Report success")
    async def complete(task_id: TaskIdPath, request: Request) -> Response:
        body = parse_body(await request.body(), CompleteIn)
        tid = _task_id(task_id)
        state = await service.complete(
            tid, worker_id=body.worker_id, fence=body.fence, result=body.result
        )
        return json_response({"id": str(tid), "state": state.value})

    @router.post("/tasks/{id}/fail", dependencies=[workers], summary="Report a failed attempt")
    async def fail(task_id: TaskIdPath, request: Request) -> Response:
        body = parse_body(await request.body(), FailIn)
        tid = _task_id(task_id)
        state = await service.fail(
            tid,
            worker_id=body.worker_id,
            fence=body.fence,
            error=body.error,
            retry=body.retry,
            delay_ms=_ms(body.retry_delay_s),
        )
        return json_response({"id": str(tid), "state": state.value})

    return router


async def _outcome(task_id: int, action: Awaitable[TaskState]) -> dict[str, Any]:
    """Run one acknowledgement; a stale fence or an illegal state is reported, not raised."""
    try:
        state: TaskState | NorthpoleError = await action
    except NorthpoleError as exc:
        state = exc
    return _result(task_id, state)


def _result(task_id: int, state: TaskState | NorthpoleError) -> dict[str, Any]:
    """One item of the ack answer: the new state, or the error that refused it."""
    if isinstance(state, NorthpoleError):
        return {"id": str(task_id), "ok": False, "state": None, "error": state.to_body()["error"]}
    return {"id": str(task_id), "ok": True, "state": state.value, "error": None}
