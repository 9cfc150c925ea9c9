"""Unit tests for northpole.tasks.handlers: the registry, the context and handler outcomes."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from northpole.core.errors import ConfigurationError
from northpole.tasks.handlers import (
    Fail,
    NoHandler,
    Outcome,
    Retry,
    TaskContext,
    TaskRegistry,
    invoke,
    is_async_handler,
)

_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


def context(**fields: object) -> TaskContext:
    """Return a context for task 1 of gift 10, with ``fields`` overriding."""
    values: dict[str, object] = {
        "task_id": 1,
        "gift_id": 10,
        "task_type": "wrap",
        "metadata": {},
        "attempt": 1,
    }
    values.update(fields)
    return TaskContext(**values)  # type: ignore[arg-type]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """A two-thread executor, shut down after the test."""
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


# -- the registry --------------------------------------------------------------------------


def test_decorator_registers_and_returns_the_function() -> None:
    """``@tasks.handler(type)`` registers the function and leaves it callable as before."""
    tasks = TaskRegistry()

    @tasks.handler("wrap_gift")
    def wrap(ctx: TaskContext) -> str:
        return "ok"

    assert tasks.get("wrap_gift") is wrap
    assert wrap(context()) == "ok"
    assert tasks.types == frozenset({"wrap_gift"})
    assert "wrap_gift" in tasks and len(tasks) == 1 and list(tasks) == ["wrap_gift"]


def test_second_handler_for_a_type_is_refused() -> None:
    """Registering two handlers for one type is a configuration error."""
    tasks = TaskRegistry()
    tasks.register("wrap", lambda ctx: None)
    with pytest.raises(ConfigurationError, match="already has a handler"):
        tasks.register("wrap", lambda ctx: None)


def test_empty_task_type_is_refused() -> None:
    """A handler needs a non-empty task type."""
    with pytest.raises(ConfigurationError):
        TaskRegistry().register("", lambda ctx: None)


def test_unknown_type_raises_no_handler() -> None:
    """Looking up a type without a handler raises NoHandler naming the type."""
    with pytest.raises(NoHandler, match="no handler for task type 'load'") as caught:
        TaskRegistry().get("load")
    assert caught.value.code == "no_handler"


def test_async_and_sync_handlers_are_told_apart() -> None:
    """Coroutine functions run on the loop; everything else in a thread."""

    async def a(ctx: TaskContext) -> None:
        return None

    def s(ctx: TaskContext) -> None:
        return None

    assert is_async_handler(a) and not is_async_handler(s)


# -- the context ---------------------------------------------------------------------------


def test_context_deadline_is_an_aware_utc_datetime() -> None:
    """deadline_ms reads back as an aware UTC datetime; no deadline reads as None."""
    ctx = context(deadline_ms=1_767_225_600_000)
    assert ctx.deadline == datetime(2026, 1, 1, tzinfo=UTC)
    assert context().deadline is None


def test_last_attempt_is_the_one_past_max_retries() -> None:
    """With max_retries 2, attempts 1 and 2 may be retried and attempt 3 is the last."""
    assert not context(attempt=2, max_retries=2).is_last_attempt
    assert context(attempt=3, max_retries=2).is_last_attempt


def test_cancel_sets_the_event_and_the_thread_safe_flag() -> None:
    """cancel() sets both the asyncio event and what is_cancelled() reads."""
    ctx = context()
    assert not ctx.is_cancelled() and not ctx.cancelled.is_set()
    ctx.cancel()
    assert ctx.is_cancelled() and ctx.cancelled.is_set()


# -- outcomes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (Retry(delay=3, message="busy"), Outcome(error="busy", retry=True, retry_delay_s=3)),
        (Retry(), Outcome(error="retry requested", retry=True)),
        (Fail("coal"), Outcome(error="coal", retry=False)),
        (KeyError("ribbon"), Outcome(error="KeyError: 'ribbon'", retry=True)),
        (RuntimeError(), Outcome(error="RuntimeError: ", retry=True)),
    ],
)
def test_exceptions_map_to_outcomes(exc: Exception, expected: Outcome) -> None:
    """Retry keeps its delay, Fail never retries, anything else retries with its type."""
    assert Outcome.of_exception(exc) == expected


def test_negative_retry_delay_is_refused() -> None:
    """Retry(delay=-1) is a programming error."""
    with pytest.raises(ValueError, match=">= 0"):
        Retry(delay=-1)


@pytest.mark.parametrize("value", ["done", None])
def test_text_or_none_results_succeed(value: str | None) -> None:
    """A str or None return value is a success carrying it as the result."""
    outcome = Outcome.of_result(value)
    assert outcome.ok and outcome.result == value


def test_non_text_result_fails_without_retry() -> None:
    """Returning something other than str or None fails the task: retrying will not help."""
    outcome = Outcome.of_result(42)
    assert not outcome.ok and not outcome.retry
    assert outcome.error == "TypeError: handler returned int, expected str or None"


# -- invoking ------------------------------------------------------------------------------


async def test_invoke_awaits_async_handlers_on_the_loop(executor: ThreadPoolExecutor) -> None:
    """An async handler runs on the event loop's thread and its result is the outcome's."""
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def handler(ctx: TaskContext) -> str:
        seen.append(threading.get_ident())
        return f"gift {ctx.gift_id}"

    assert await invoke(handler, context(), executor) == Outcome(result="gift 10")
    assert seen == [loop_thread]


async def test_invoke_runs_sync_handlers_in_the_executor_with_context_vars(
    executor: ThreadPoolExecutor,
) -> None:
    """A sync handler runs in the executor and sees the caller's context variables."""
    seen: list[tuple[int, str]] = []

    def handler(ctx: TaskContext) -> str:
        seen.append((threading.get_ident(), _LABEL.get()))
        return "ok"

    token = _LABEL.set("task-1")
    try:
        assert (await invoke(handler, context(), executor)).ok
    finally:
        _LABEL.reset(token)
    assert seen[0][0] != threading.get_ident()
    assert seen[0][1] == "task-1"


async def test_invoke_turns_exceptions_into_failed_outcomes(executor: ThreadPoolExecutor) -> None:
    """Exceptions of async and sync handlers alike become failed outcomes."""

    async def a(ctx: TaskContext) -> None:
        raise OSError("disk full")

    def s(ctx: TaskContext) -> None:
        raise Retry(delay=1.5)

    assert await invoke(a, context(), executor) == Outcome(error="OSError: disk full", retry=True)
    failed = await invoke(s, context(), executor)
    assert (failed.retry, failed.retry_delay_s) == (True, 1.5)


async def test_invoke_awaits_what_a_sync_wrapper_returns(executor: ThreadPoolExecutor) -> None:
    """A callable object whose call returns a coroutine has that coroutine awaited."""

    class Wrapper:
        async def run(self, ctx: TaskContext) -> str:
            return "awaited"

        def __call__(self, ctx: TaskContext) -> object:
            return self.run(ctx)

    assert await invoke(Wrapper(), context(), executor) == Outcome(result="awaited")  # type: ignore[arg-type]


async def test_invoke_lets_cancellation_through(executor: ThreadPoolExecutor) -> None:
    """Cancelling the task running a handler cancels it; it is not turned into an outcome."""
    began = asyncio.Event()

    async def handler(ctx: TaskContext) -> None:
        began.set()
        await asyncio.sleep(3600)

    running = asyncio.create_task(invoke(handler, context(), executor))
    await began.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
