"""Stopping tasks whose cancellation a callee swallowed (core.lifecycle)."""

from __future__ import annotations

import asyncio

from northpole.core.lifecycle import cancel_requested, check_cancelled, stop_tasks


async def swallow_one_cancel(entered: asyncio.Event) -> None:
    """Like a driver hit by Python 3.11's wait_for race: a cancel that lands here is lost."""
    entered.set()
    try:
        await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        pass


async def test_a_loop_that_checks_stops_after_a_cancel_its_callee_swallowed() -> None:
    """check_cancelled raises at the end of the pass whose call lost the CancelledError."""
    entered = asyncio.Event()
    passes = 0

    async def loop() -> None:
        nonlocal passes
        while True:
            await swallow_one_cancel(entered)
            passes += 1
            check_cancelled()

    task = asyncio.create_task(loop())
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}
    assert task.cancelled()
    assert passes == 1


async def test_without_the_check_the_same_loop_outlives_its_cancel() -> None:
    """The failure check_cancelled exists for: one cancel, lost, and the loop runs on."""
    entered = asyncio.Event()

    running = True

    async def loop() -> None:
        while running:
            await swallow_one_cancel(entered)

    task = asyncio.create_task(loop())
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done
    running = False
    await asyncio.wait_for(task, timeout=2)


async def test_stop_tasks_cancels_again_until_every_task_has_ended() -> None:
    """A task that swallows its first cancels ends at a later one; finished tasks are skipped."""
    lost = 0

    async def stubborn() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                lost += 1
                if lost == 3:
                    raise

    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks(task, finished, retry_s=0.05), timeout=2)
    assert task.cancelled()
    assert lost == 3


async def test_stop_tasks_does_not_raise_what_the_tasks_raised() -> None:
    """A task that failed is stopped quietly, its exception retrieved."""

    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await stop_tasks(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_no_cancel_request_means_nothing_to_check() -> None:
    """Outside a cancel, check_cancelled returns and cancel_requested is False."""
    assert not cancel_requested()
    check_cancelled()
