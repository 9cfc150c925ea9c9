"""The worker's port to the queue, :class:`WorkerBackend`, and its two adapters.

* :class:`LocalBackend` calls a task service in the same process (embedded edition).
* :class:`HttpBackend` talks to ``/api/v1/workers/{worker_id}/...`` over HTTP,
  retrying connection errors and 5xx answers with bounded backoff, never 4xx.

Errors a backend raises, beside the tree in :mod:`northpole.core.errors`::

    NorthpoleError
    ├── Unavailable
    │   └── BackendUnavailable     the queue could not be reached (retries spent);
    │                              the worker backs off and tries again
    └── RemoteError                the queue answered 4xx (bad token, bad input);
                                   carries the answer's status, code and field

Per-task problems with acks (a stale fence: the task was taken away) are not
errors but not-ok :class:`AckResult` items.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson

from northpole.core.errors import NorthpoleError, Unavailable
from northpole.core.logging import get_logger
from northpole.tasks.model import Task, TaskState
from northpole.tasks.store import Claim, CompleteRequest, Heartbeat, HeartbeatAnswer

_log = get_logger(__name__)

#: The API routes the HTTP backend calls, relative to the server's base URL.
CLAIM_PATH = "/api/v1/workers/{worker_id}/claim"
HEARTBEAT_PATH = "/api/v1/workers/{worker_id}/heartbeat"
ACK_PATH = "/api/v1/workers/{worker_id}/ack"


class BackendUnavailable(Unavailable):
    """The queue could not be reached, or kept answering 5xx, after bounded retries."""

    code = "backend_unavailable"


class RemoteError(NorthpoleError):
    """The queue refused a request (4xx); ``status_code``, ``code`` and ``field`` are its own."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status_code = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task handed to this worker: what the handler needs and the fence to ack with.

    Attributes:
        task_id: The task's id.
        gift_id: Its gift.
        task_type: Its type.
        fence: The fencing token of this assignment; acks must show it.
        attempt: Attempts started so far, this one included (1 on the first run).
        max_retries: Retries allowed after the first attempt.
        metadata: The submitter's data.
        idempotency_key: The submitter's key, if any.
        deadline_ms: Unix ms deadline, if any.
    """

    task_id: int
    gift_id: int
    task_type: str
    fence: int
    attempt: int
    max_retries: int = 0
    metadata: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    deadline_ms: int | None = None

    @classmethod
    def from_task(cls, task: Task) -> Assignment:
        """Return the assignment of a stored task (as the in-process service returns it)."""
        return cls(
            task_id=task.id,
            gift_id=task.gift_id,
            task_type=task.task_type,
            fence=task.fence,
            attempt=task.attempts,
            max_retries=task.max_retries,
            metadata=dict(task.metadata),
            idempotency_key=task.idempotency_key,
            deadline_ms=task.deadline_ms,
        )


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """What a claim returns: the tasks handed over and the worker's partitions."""

    tasks: list[Assignment]
    partitions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful attempt to report."""

    task_id: int
    fence: int
    result: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt to report.

    Attributes:
        task_id: The task.
        fence: The assignment's fence.
        error: The message recorded as ``last_error``.
        retry: Whether the task may be retried (while retries are left).
        retry_delay_s: Requested delay before the retry; ``None``: the queue's backoff.
    """

    task_id: int
    fence: int
    error: str
    retry: bool = True
    retry_delay_s: float | None = None


Ack = Completion | Failure


@dataclass(frozen=True, slots=True)
class AckResult:
    """How the queue took one ack.

    Attributes:
        task_id: The task acked.
        ok: Whether the ack was applied.
        state: The task's state afterwards, when known.
        error_code: Why not, e.g. ``stale_fence`` (the task was taken away).
        message: The error's message.
    """

    task_id: int
    ok: bool
    state: str | None = None
    error_code: str | None = None
    message: str | None = None


class WorkerBackend(Protocol):
    """Where a worker pool gets tasks and reports on them."""

    async def claim(self, claim: Claim, *, wait_s: float) -> ClaimReply:
        """Take up to ``claim.limit`` tasks, waiting up to ``wait_s`` s for some to appear."""
        ...

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Report liveness, starts and held tasks; extend leases; learn what to cancel."""
        ...

    async def ack(
        self, worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        """Report finished attempts; return one result per item, completions first."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# -- in process ----------------------------------------------------------------------------


class TaskServicePort(Protocol):
    """The part of the in-process task service a :class:`LocalBackend` uses."""

    async def claim(self, claim: Claim, *, wait_s: float) -> tuple[list[Task], tuple[int, ...]]:
        """Assign tasks to the worker; return them and its partitions."""
        ...

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Record a heartbeat."""
        ...

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None
    ) -> Task | TaskState:
        """Record success; return the task or its new state."""
        ...

    async def complete_many(
        self, items: Sequence[CompleteRequest]
    ) -> Sequence[TaskState | NorthpoleError]:
        """Record many successes; per item, the new state or the error that refused it."""
        ...

    async def fail(
        self,
        task_id: int,
        *,
        worker_id: str,
        fence: int,
        error: str,
        retry: bool,
        delay_ms: int | None,
    ) -> Task | TaskState:
        """Record a failed attempt; return the task or its new state."""
        ...


class LocalBackend:
    """A :class:`WorkerBackend` over an in-process task service.

    Args:
        service: The task service (its lifecycle belongs to the caller).
    """

    def __init__(self, service: TaskServicePort) -> None:
        self._service = service

    async def claim(self, claim: Claim, *, wait_s: float) -> ClaimReply:
        """Claim through the service."""
        tasks, partitions = await self._service.claim(claim, wait_s=wait_s)
        return ClaimReply([Assignment.from_task(t) for t in tasks], tuple(partitions))

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Heartbeat through the service."""
        return await self._service.heartbeat(beat)

    async def ack(
        self, worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        """Complete all at once (one store call), then fail one by one; a refused item
        (stale fence, ...) is a not-ok result."""
        results: list[AckResult] = []
        if completed:
            states = await self._service.complete_many(
                [CompleteRequest(d.task_id, worker_id, d.fence, d.result) for d in completed]
            )
            for done, state in zip(completed, states, strict=True):
                if isinstance(state, NorthpoleError):
                    results.append(_refused(done.task_id, state))
                else:
                    results.append(AckResult(done.task_id, ok=True, state=state.value))
        for bad in failed:
            delay_ms = None if bad.retry_delay_s is None else round(bad.retry_delay_s * 1000)
            call = self._service.fail(
                bad.task_id,
                worker_id=worker_id,
                fence=bad.fence,
                error=bad.error,
                retry=bad.retry,
                delay_ms=delay_ms,
            )
            results.append(await _applied(bad.task_id, call))
        return results

    async def close(self) -> None:
        """Nothing to release: the service belongs to the caller."""


def _refused(task_id: int, exc: NorthpoleError) -> AckResult:
    """A refused ack (stale fence, unknown task); a down service is raised instead."""
    if isinstance(exc, Unavailable):  # the acker retries the batch
        raise exc
    return AckResult(task_id, ok=False, error_code=exc.code, message=exc.message)


async def _applied(task_id: int, call: Awaitable[Task | TaskState]) -> AckResult:
    """Await one complete/fail; a refusal (stale fence, unknown task) is a not-ok result."""
    try:
        answer = await call
    except Unavailable:  # the service itself is down: the acker retries the batch
        raise
    except NorthpoleError as exc:
        return _refused(task_id, exc)
    state = answer.state if isinstance(answer, Task) else answer
    return AckResult(task_id, ok=True, state=state.value)


# -- over HTTP -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with equal jitter, for transient failures.

    Attributes:
        base_s: Ceiling of the first delay.
        factor: Growth per failure.
        max_s: Ceiling of any delay.
        attempts: Tries in all (the first one included) before giving up.
    """

    base_s: float = 0.1
    factor: float = 2.0
    max_s: float = 5.0
    attempts: int = 5

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """Return the delay after the ``failures``-th failure in a row (1 for the first)."""
        ceiling = min(self.max_s, self.base_s * self.factor ** min(max(failures - 1, 0), 64))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError)


class HttpBackend:
    """A :class:`WorkerBackend` speaking the task queue's HTTP API.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8080``.
        token: A bearer token with role worker, operator or admin.
        timeout: Seconds per request (a claim's ``wait_s`` is added to it).
        backoff: Retries of connection errors and 5xx answers.
        transport: An httpx transport (tests pass ``httpx.MockTransport``).
        sleep: How to wait between retries (tests pass a fake).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._timeout = timeout
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    async def claim(self, claim: Claim, *, wait_s: float) -> ClaimReply:
        """``POST .../claim``; the request may take ``wait_s`` more than the timeout."""
        body = {
            "group": claim.group,
            "task_types": sorted(claim.task_types),
            "limit": claim.limit,
            "wait_s": wait_s,
            "lease_s": claim.lease_ms / 1000,
        }
        path = CLAIM_PATH.format(worker_id=claim.worker_id)
        answer = await self._post(path, body, timeout=self._timeout + wait_s)
        return ClaimReply(
            [assignment_from_json(t) for t in answer.get("tasks", [])],
            tuple(int(p) for p in answer.get("partitions", [])),
        )

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """``POST .../heartbeat``."""
        body = {
            "group": beat.group,
            "task_types": sorted(beat.task_types),
            "concurrency": beat.concurrency,
            "started": [{"id": str(i), "fence": f} for i, f in beat.started],
            "holding": [{"id": str(i), "fence": f} for i, f in beat.holding],
            "lease_s": beat.lease_ms / 1000,
        }
        answer = await self._post(HEARTBEAT_PATH.format(worker_id=beat.worker_id), body)
        return HeartbeatAnswer(
            cancel=tuple(int(i) for i in answer.get("cancel", [])),
            partitions=tuple(int(p) for p in answer.get("partitions", [])),
        )

    async def ack(
        self, worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        """``POST .../ack`` with every item in one request."""
        body = {
            "completed": [
                {"id": str(c.task_id), "fence": c.fence, "result": c.result} for c in completed
            ],
            "failed": [
                {
                    "id": str(f.task_id),
                    "fence": f.fence,
                    "error": f.error,
                    "retry": f.retry,
                    "retry_delay_s": f.retry_delay_s,
                }
                for f in failed
            ],
        }
        answer = await self._post(ACK_PATH.format(worker_id=worker_id), body)
        return [ack_result_from_json(item) for item in answer.get("results", [])]

    async def close(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    async def __aenter__(self) -> HttpBackend:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _post(
        self, path: str, body: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """POST ``body``; retry transport errors and 5xx per the backoff; raise on 4xx."""
        content = orjson.dumps(body)
        failures = 0
        while True:
            problem = await self._attempt(path, content, timeout)
            if isinstance(problem, dict):
                return problem
            failures += 1
            if failures >= self._backoff.attempts:
                raise BackendUnavailable(
                    f"task queue unreachable after {failures} tries: {problem}"
                )
            delay = self._backoff.delay_s(failures, self._rng)
            _log.warning("task queue call failed; retrying", path=path, error=problem, in_s=delay)
            await self._sleep(delay)

    async def _attempt(
        self, path: str, content: bytes, timeout: float | None
    ) -> dict[str, Any] | str:
        """Make one request: the JSON answer, or a description of a retryable failure."""
        try:
            response = await self._client.post(
                path, content=content, timeout=timeout or self._timeout
            )
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code >= 500:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code >= 400:
            raise remote_error(response)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise RemoteError(response.status_code, "bad_response", "answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise RemoteError(response.status_code, "bad_response", "answer is not an object")
        return answer


def remote_error(response: httpx.Response) -> RemoteError:
    """Return the :class:`RemoteError` of a 4xx answer, from its JSON error body if any."""
    try:
        error = orjson.loads(response.content)["error"]
        return RemoteError(
            response.status_code,
            str(error.get("code") or "http_error"),
            str(error.get("message") or response.reason_phrase),
            field=error.get("field"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = response.text[:200] or response.reason_phrase
        return RemoteError(
            response.status_code, "http_error", f"HTTP {response.status_code}: {text}"
        )


def parse_time_ms(value: str | None) -> int | None:
    """Return an RFC 3339 time as Unix milliseconds (``None`` stays ``None``)."""
    if value is None:
        return None
    return round(datetime.fromisoformat(value).timestamp() * 1000)


def assignment_from_json(task: Mapping[str, Any]) -> Assignment:
    """Return the assignment in one TASK object of the API."""
    return Assignment(
        task_id=int(task["id"]),
        gift_id=int(task["gift_id"]),
        task_type=str(task["task_type"]),
        fence=int(task["fence"]),
        attempt=int(task.get("attempts") or 1),
        max_retries=int(task.get("max_retries") or 0),
        metadata={str(k): str(v) for k, v in (task.get("metadata") or {}).items()},
        idempotency_key=task.get("idempotency_key"),
        deadline_ms=parse_time_ms(task.get("deadline")),
    )


def ack_result_from_json(item: Mapping[str, Any]) -> AckResult:
    """Return one per-item result of the ack route."""
    error = item.get("error") or {}
    return AckResult(
        task_id=int(item["id"]),
        ok=bool(item.get("ok")),
        state=item.get("state"),
        error_code=error.get("code"),
        message=error.get("message"),
    )
