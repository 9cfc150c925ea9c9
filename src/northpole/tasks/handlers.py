"""Task handlers: the registry a worker serves, the context a handler gets, and what it returns.

A handler is a plain function, async or not, registered for one task type::

    tasks = TaskRegistry()

    @tasks.handler("wrap_gift")
    async def wrap(ctx: TaskContext) -> str | None:
        paper = ctx.metadata.get("paper", "plain")
        ...
        return "wrapped"  # stored as the task's result

Delivery is at least once: a task may run again after a worker dies or loses
its lease, so a handler should be idempotent (``ctx.idempotency_key`` and
``ctx.attempt`` help). What a handler does decides the attempt's outcome:

* returns ``str`` or ``None``: the task is COMPLETED with that result;
* raises :class:`Retry`: the attempt fails and the task is retried after
  ``delay`` seconds (or the queue's backoff), while retries are left;
* raises :class:`Fail`: the task is FAILED at once, without retry;
* raises anything else: the attempt fails with ``"<ExceptionType>: <message>"``
  and is retried per the queue's retry policy.

Async handlers run on the worker's event loop; sync handlers run in a thread
pool and should poll :meth:`TaskContext.is_cancelled` in long loops.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar, cast

from northpole.core.errors import ConfigurationError, NotFound

#: What a handler may be: ``async def f(ctx) -> str | None`` or ``def f(ctx) -> str | None``.
Handler = Callable[["TaskContext"], Awaitable[str | None]] | Callable[["TaskContext"], str | None]
H = TypeVar("H", bound=Handler)


class Retry(Exception):
    """Raised by a handler to fail this attempt and ask for a retry.

    Args:
        delay: Seconds before the retry; ``None`` leaves it to the queue's backoff.
        message: Why, recorded as the task's ``last_error``.
    """

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        super().__init__(message or "retry requested")
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0")
        self.delay = delay
        self.message = message or "retry requested"


class Fail(Exception):
    """Raised by a handler to fail the task for good, without retry.

    Args:
        message: Why, recorded as the task's ``last_error``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoHandler(NotFound):
    """The registry has no handler for a task type."""

    code = "no_handler"

    def __init__(self, task_type: str) -> None:
        super().__init__(f"no handler for task type {task_type!r}", field="task_type")
        self.task_type = task_type


@dataclass(slots=True)
class TaskContext:
    """What a handler knows about the task it runs.

    Attributes:
        task_id: The task's id.
        gift_id: The gift the task works on.
        task_type: The task's type.
        metadata: The submitter's string-to-string data.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        max_retries: Retries the task may have after its first attempt.
        idempotency_key: The submitter's key, if any (delivery is at least once).
        deadline_ms: Unix ms after which the queue gives up on the task; ``None``: never.
        cancelled: Set when the queue takes the task away (cancelled, past its
            deadline or reclaimed); the result will be dropped, so stop soon.
    """

    task_id: int
    gift_id: int
    task_type: str
    metadata: Mapping[str, str]
    attempt: int
    max_retries: int = 0
    idempotency_key: str | None = None
    deadline_ms: int | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # A plain flag: reading and setting one attribute is atomic under the GIL, and
    # a threading.Event (a lock and a condition) per task is a cost every task pays.
    _cancelled_flag: bool = field(default=False, repr=False)

    @property
    def deadline(self) -> datetime | None:
        """The deadline as an aware UTC datetime, or ``None``."""
        if self.deadline_ms is None:
            return None
        return datetime.fromtimestamp(self.deadline_ms / 1000, tz=UTC)

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure of this attempt fails the task for good."""
        return self.attempt > self.max_retries

    def is_cancelled(self) -> bool:
        """Return whether the task was taken away; safe to call from any thread."""
        return self._cancelled_flag

    def cancel(self) -> None:
        """Mark the task cancelled (the worker calls this on its event loop's thread)."""
        self._cancelled_flag = True
        self.cancelled.set()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, as the worker reports it.

    Attributes:
        error: ``None`` on success, else the message recorded as ``last_error``.
        result: The handler's result on success.
        retry: On failure, whether the task may be retried.
        retry_delay_s: On failure, the handler's requested delay (``None``: backoff).
    """

    error: str | None = None
    result: str | None = None
    retry: bool = False
    retry_delay_s: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded."""
        return self.error is None

    @classmethod
    def of_result(cls, value: object) -> Outcome:
        """Return the outcome of a handler that returned ``value``."""
        if value is None or isinstance(value, str):
            return cls(result=value)
        return cls(
            error=f"TypeError: handler returned {type(value).__name__}, expected str or None",
            retry=False,
        )

    @classmethod
    def of_exception(cls, exc: BaseException) -> Outcome:
        """Return the outcome of a handler that raised ``exc``."""
        if isinstance(exc, Retry):
            return cls(error=exc.message, retry=True, retry_delay_s=exc.delay)
        if isinstance(exc, Fail):
            return cls(error=exc.message, retry=False)
        return cls(error=f"{type(exc).__name__}: {exc}", retry=True)


class TaskRegistry:
    """Handlers by task type; a worker claims only the types registered here."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def handler(self, task_type: str) -> Callable[[H], H]:
        """Return a decorator registering the decorated function for ``task_type``.

        Raises:
            ConfigurationError: The type is empty or already has a handler.
        """

        def register(fn: H) -> H:
            self.register(task_type, fn)
            return fn

        return register

    def register(self, task_type: str, fn: Handler) -> None:
        """Register ``fn`` for ``task_type``.

        Raises:
            ConfigurationError: The type is empty or already has a handler.
        """
        if not task_type:
            raise ConfigurationError("a task type must not be empty")
        if task_type in self._handlers:
            raise ConfigurationError(f"task type {task_type!r} already has a handler")
        self._handlers[task_type] = fn

    def get(self, task_type: str) -> Handler:
        """Return the handler for ``task_type``.

        Raises:
            NoHandler: No handler is registered for it.
        """
        try:
            return self._handlers[task_type]
        except KeyError:
            raise NoHandler(task_type) from None

    @property
    def types(self) -> frozenset[str]:
        """Every registered task type."""
        return frozenset(self._handlers)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)


def is_async_handler(fn: Handler) -> bool:
    """Return whether ``fn`` is a coroutine function (run on the loop, not in a thread)."""
    return inspect.iscoroutinefunction(fn)


async def invoke(fn: Handler, ctx: TaskContext, executor: Executor) -> Outcome:
    """Run one handler on ``ctx`` and turn whatever happens into an :class:`Outcome`.

    Async handlers are awaited on the running loop; sync ones run in ``executor``
    with a copy of the caller's context variables (so log context follows them).
    Cancellation of the calling task propagates; every other exception becomes
    a failed outcome.
    """
    try:
        if is_async_handler(fn):
            value: object = await cast(Callable[[TaskContext], Awaitable[str | None]], fn)(ctx)
        else:
            loop = asyncio.get_running_loop()
            call = contextvars.copy_context().run
            value = await loop.run_in_executor(executor, call, fn, ctx)
            if inspect.isawaitable(value):  # a sync wrapper that returned a coroutine
                value = await value
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Outcome.of_exception(exc)
    return Outcome.of_result(value)
