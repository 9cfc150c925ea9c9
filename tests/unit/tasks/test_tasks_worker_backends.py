"""Unit tests for northpole.tasks.backends: the HTTP backend on a mock transport, the local one."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from northpole.core.errors import NorthpoleError, Unavailable
from northpole.tasks.backends import (
    AckResult,
    Assignment,
    BackendUnavailable,
    Backoff,
    Completion,
    Failure,
    HttpBackend,
    LocalBackend,
    RemoteError,
    parse_time_ms,
)
from northpole.tasks.model import Task, TaskState
from northpole.tasks.store import Claim, CompleteRequest, Heartbeat, HeartbeatAnswer
from northpole.tasks.transitions import StaleFence

TASK_JSON: dict[str, Any] = {
    "id": "132271570944012288",
    "gift_id": "123",
    "task_type": "wrap",
    "priority": 0,
    "dependencies": [],
    "retry_count": 1,
    "max_retries": 3,
    "deadline": "2026-01-01T00:00:00.250Z",
    "metadata": {"paper": "gold"},
    "idempotency_key": "k-1",
    "state": "ASSIGNED",
    "attempts": 2,
    "partition": 5,
    "fence": 7,
    "worker_id": "w-1",
    "created_at": "2025-12-31T23:00:00.000Z",
    "updated_at": "2025-12-31T23:00:00.000Z",
    "available_at": "2025-12-31T23:00:00.000Z",
    "started_at": None,
    "finished_at": None,
    "lease_until": "2025-12-31T23:00:30.000Z",
    "last_error": None,
    "result": None,
}

Route = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A mock transport handler: answers with ``route`` and keeps every request."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.route(request)

    def bodies(self) -> list[Any]:
        """Return every request body, parsed."""
        return [json.loads(r.content) for r in self.requests]


def backend_for(route: Route, **options: Any) -> tuple[HttpBackend, Recorder]:
    """Return an HttpBackend answering through ``route`` with instant retries."""
    recorder = Recorder(route)
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    backend = HttpBackend(
        "http://queue.test/",
        "tok",
        transport=httpx.MockTransport(recorder),
        backoff=Backoff(base_s=0.01, max_s=0.05, attempts=4),
        sleep=no_sleep,
        **options,
    )
    return backend, recorder


def answer(body: Any, status: int = 200) -> Route:
    """Return a route that always answers ``body`` with ``status``."""
    return lambda request: httpx.Response(status, json=body)


def error_body(code: str, message: str = "m", field: str | None = None) -> dict[str, Any]:
    """Return the API's JSON error body."""
    return {"error": {"code": code, "message": message, "field": field}}


# -- the HTTP backend: requests and answers ------------------------------------------------


async def test_claim_posts_the_documented_body_and_parses_tasks() -> None:
    """claim sends group, types, limit, wait_s and lease_s, with the token, and parses TASKs."""
    backend, recorder = backend_for(answer({"tasks": [TASK_JSON], "partitions": [1, 5]}))
    claim = Claim("w-1", "elves", frozenset({"wrap", "load"}), limit=3, lease_ms=1500)
    reply = await backend.claim(claim, wait_s=2.0)
    await backend.close()
    [request] = recorder.requests
    assert request.url == "http://queue.test/api/v1/workers/w-1/claim"
    assert request.headers["authorization"] == "Bearer tok"
    assert recorder.bodies() == [
        {
            "group": "elves",
            "task_types": ["load", "wrap"],
            "limit": 3,
            "wait_s": 2.0,
            "lease_s": 1.5,
        }
    ]
    assert reply.partitions == (1, 5)
    assert reply.tasks == [
        Assignment(
            task_id=132271570944012288,
            gift_id=123,
            task_type="wrap",
            fence=7,
            attempt=2,
            max_retries=3,
            metadata={"paper": "gold"},
            idempotency_key="k-1",
            deadline_ms=1_767_225_600_250,
        )
    ]


async def test_claim_timeout_covers_the_long_poll() -> None:
    """A claim's read timeout is the backend's timeout plus the long-poll wait."""
    backend, recorder = backend_for(answer({"tasks": [], "partitions": []}), timeout=3.0)
    await backend.claim(Claim("w-1", "g"), wait_s=20.0)
    await backend.close()
    assert recorder.requests[0].extensions["timeout"]["read"] == 23.0


async def test_heartbeat_sends_started_and_holding_as_decimal_ids() -> None:
    """heartbeat sends ids as strings with fences and parses cancel ids back to ints."""
    backend, recorder = backend_for(answer({"cancel": ["42"], "partitions": [0]}))
    beat = Heartbeat("w-1", "elves", frozenset({"wrap"}), 8, ((41, 2),), ((41, 2), (42, 1)), 9000)
    reply = await backend.heartbeat(beat)
    await backend.close()
    assert recorder.requests[0].url.path == "/api/v1/workers/w-1/heartbeat"
    assert recorder.bodies()[0] == {
        "group": "elves",
        "task_types": ["wrap"],
        "concurrency": 8,
        "started": [{"id": "41", "fence": 2}],
        "holding": [{"id": "41", "fence": 2}, {"id": "42", "fence": 1}],
        "lease_s": 9.0,
    }
    assert reply == HeartbeatAnswer(cancel=(42,), partitions=(0,))


async def test_ack_sends_one_batch_and_parses_per_item_results() -> None:
    """ack sends completions and failures in one request; a stale fence is a not-ok item."""
    results = [
        {"id": "1", "ok": True, "state": "COMPLETED", "error": None},
        {
            "id": "2",
            "ok": False,
            "state": None,
            "error": error_body("stale_fence", "gone")["error"],
        },
    ]
    backend, recorder = backend_for(answer({"results": results}))
    got = await backend.ack(
        "w-1", [Completion(1, 3, "done")], [Failure(2, 4, "ValueError: x", True, 2.5)]
    )
    await backend.close()
    assert recorder.requests[0].url.path == "/api/v1/workers/w-1/ack"
    assert recorder.bodies()[0] == {
        "completed": [{"id": "1", "fence": 3, "result": "done"}],
        "failed": [
            {"id": "2", "fence": 4, "error": "ValueError: x", "retry": True, "retry_delay_s": 2.5}
        ],
    }
    assert got == [
        AckResult(1, True, "COMPLETED"),
        AckResult(2, False, None, "stale_fence", "gone"),
    ]


def test_rfc3339_times_parse_to_unix_ms() -> None:
    """Z and offset forms parse to the same Unix milliseconds; None stays None."""
    assert parse_time_ms("2026-01-01T00:00:00.001Z") == 1_767_225_600_001
    assert parse_time_ms("2026-01-01T01:00:00.001+01:00") == 1_767_225_600_001
    assert parse_time_ms(None) is None


# -- the HTTP backend: retries -------------------------------------------------------------


def flaky(failures: list[Exception | int], final: Any) -> Route:
    """Return a route that raises or answers each listed failure in turn, then ``final``."""
    remaining = list(failures)

    def route(request: httpx.Request) -> httpx.Response:
        if remaining:
            failure = remaining.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, text="overloaded")
        return httpx.Response(200, json=final)

    return route


async def test_connection_errors_are_retried_until_success() -> None:
    """Connect errors and read timeouts are retried with backoff, then the answer is used."""
    failures: list[Exception | int] = [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ]
    backend, recorder = backend_for(flaky(failures, {"cancel": [], "partitions": [3]}))
    reply = await backend.heartbeat(Heartbeat("w-1", "g"))
    await backend.close()
    assert reply.partitions == (3,)
    assert len(recorder.requests) == 3


async def test_server_errors_are_retried() -> None:
    """5xx answers are retried like connection errors."""
    backend, recorder = backend_for(flaky([503, 500], {"tasks": [], "partitions": []}))
    reply = await backend.claim(Claim("w-1", "g"), wait_s=0)
    await backend.close()
    assert reply.tasks == [] and len(recorder.requests) == 3


async def test_retries_are_bounded_then_backend_unavailable() -> None:
    """After ``attempts`` tries in all, the backend raises BackendUnavailable (an Unavailable)."""
    backend, recorder = backend_for(flaky([httpx.ConnectError("refused")] * 10, {}))
    with pytest.raises(BackendUnavailable, match="after 4 tries") as caught:
        await backend.heartbeat(Heartbeat("w-1", "g"))
    await backend.close()
    assert isinstance(caught.value, Unavailable)
    assert len(recorder.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_client_errors_are_never_retried(status: int) -> None:
    """A 4xx answer raises RemoteError with the body's code and field after one request."""
    route = answer(error_body("invalid_input", "limit too big", "limit"), status)
    backend, recorder = backend_for(route)
    with pytest.raises(RemoteError) as caught:
        await backend.claim(Claim("w-1", "g"), wait_s=0)
    await backend.close()
    assert len(recorder.requests) == 1
    error = caught.value
    assert (error.status_code, error.code, error.message, error.field) == (
        status,
        "invalid_input",
        "limit too big",
        "limit",
    )


async def test_client_error_without_json_body_still_raises_remote_error() -> None:
    """A 4xx with a plain text body becomes a RemoteError with code http_error."""
    backend, _ = backend_for(lambda request: httpx.Response(404, text="no such route"))
    with pytest.raises(RemoteError, match="HTTP 404: no such route") as caught:
        await backend.heartbeat(Heartbeat("w-1", "g"))
    await backend.close()
    assert caught.value.code == "http_error"


async def test_non_json_success_is_a_remote_error() -> None:
    """A 200 whose body is not a JSON object is refused rather than misread."""
    backend, _ = backend_for(lambda request: httpx.Response(200, text="<html>"))
    with pytest.raises(RemoteError, match="not JSON"):
        await backend.heartbeat(Heartbeat("w-1", "g"))
    backend2, _ = backend_for(answer([1, 2]))
    with pytest.raises(RemoteError, match="not an object"):
        await backend2.heartbeat(Heartbeat("w-1", "g"))
    await backend.close()
    await backend2.close()


def test_backoff_delays_grow_with_equal_jitter_and_are_capped() -> None:
    """Delay n lies in [d/2, d] with d = min(max_s, base_s * factor**(n-1))."""
    backoff = Backoff(base_s=0.1, factor=2.0, max_s=1.0)
    rng = random.Random(7)
    for n, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (100, 1.0)]:
        delay = backoff.delay_s(n, rng)
        assert ceiling / 2 <= delay <= ceiling


# -- the local backend ---------------------------------------------------------------------


def stored_task(**fields: Any) -> Task:
    """Return an ASSIGNED task record with ``fields`` overriding."""
    values: dict[str, Any] = {
        "id": 5,
        "gift_id": 50,
        "task_type": "wrap",
        "priority": 0,
        "dependencies": (),
        "max_retries": 2,
        "deadline_ms": None,
        "metadata": {"a": "b"},
        "idempotency_key": None,
        "partition": 1,
        "state": TaskState.ASSIGNED,
        "created_ms": 0,
        "updated_ms": 0,
        "available_ms": 0,
        "attempts": 1,
        "fence": 3,
        "worker_id": "w-1",
    }
    values.update(fields)
    return Task(**values)


class FakeService:
    """Records calls and answers like TaskService; a wrong fence raises StaleFence."""

    def __init__(self) -> None:
        self.task = stored_task()
        self.calls: list[tuple[str, Any]] = []
        self.down = False

    async def claim(self, claim: Claim, *, wait_s: float) -> tuple[list[Task], tuple[int, ...]]:
        """Hand over the one task."""
        self.calls.append(("claim", (claim, wait_s)))
        return [self.task], (1, 2)

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Answer with nothing to cancel."""
        self.calls.append(("heartbeat", beat))
        return HeartbeatAnswer(cancel=(), partitions=(1,))

    def _check(self, worker_id: str, fence: int) -> None:
        if self.down:
            raise Unavailable("store closed")
        if fence != self.task.fence:
            raise StaleFence(self.task, worker_id, fence)

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None
    ) -> TaskState:
        """Complete if the fence is current."""
        self._check(worker_id, fence)
        self.calls.append(("complete", (task_id, worker_id, fence, result)))
        return TaskState.COMPLETED

    async def complete_many(
        self, items: Sequence[CompleteRequest]
    ) -> list[TaskState | NorthpoleError]:
        """Complete each item as :meth:`complete` would; a refusal is returned, not raised."""
        if self.down:
            raise Unavailable("store closed")
        out: list[TaskState | NorthpoleError] = []
        for item in items:
            try:
                out.append(
                    await self.complete(
                        item.task_id, worker_id=item.worker_id, fence=item.fence, result=item.result
                    )
                )
            except StaleFence as exc:
                out.append(exc)
        return out

    async def fail(
        self,
        task_id: int,
        *,
        worker_id: str,
        fence: int,
        error: str,
        retry: bool,
        delay_ms: int | None,
    ) -> Task:
        """Fail if the fence is current; answers with the whole task (either form is allowed)."""
        self._check(worker_id, fence)
        self.calls.append(("fail", (task_id, worker_id, fence, error, retry, delay_ms)))
        return stored_task(state=TaskState.PENDING)


async def test_local_claim_and_heartbeat_pass_through() -> None:
    """claim turns stored tasks into assignments; heartbeat returns the service's answer."""
    service = FakeService()
    backend = LocalBackend(service)
    reply = await backend.claim(Claim("w-1", "g"), wait_s=1.5)
    assert reply.partitions == (1, 2)
    assert reply.tasks == [Assignment(5, 50, "wrap", 3, 1, 2, {"a": "b"}, None, None)]
    assert (await backend.heartbeat(Heartbeat("w-1", "g"))).partitions == (1,)
    assert service.calls[0][1][1] == 1.5
    await backend.close()


async def test_local_ack_applies_items_and_reports_stale_fences_per_item() -> None:
    """Good items are applied; a stale fence is a not-ok result, not an exception."""
    service = FakeService()
    results = await LocalBackend(service).ack(
        "w-1",
        [Completion(5, 3, "ok"), Completion(5, 2, "late")],
        [Failure(5, 3, "boom", True, 1.25)],
    )
    assert [(r.ok, r.state, r.error_code) for r in results] == [
        (True, "COMPLETED", None),
        (False, None, "stale_fence"),
        (True, "PENDING", None),
    ]
    assert ("fail", (5, "w-1", 3, "boom", True, 1250)) in service.calls


async def test_local_ack_raises_when_the_service_is_unavailable() -> None:
    """An Unavailable service fails the whole ack call, so the acker retries it."""
    service = FakeService()
    service.down = True
    with pytest.raises(Unavailable):
        await LocalBackend(service).ack("w-1", [Completion(5, 3)], [])


def test_remote_error_is_a_northpole_error() -> None:
    """RemoteError keeps the remote status and code on the instance."""
    error = RemoteError(403, "forbidden", "role worker needed")
    assert isinstance(error, NorthpoleError)
    assert error.to_body()["error"]["code"] == "forbidden" and error.status_code == 403
