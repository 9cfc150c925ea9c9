"""The demo's elves: handlers for the four stages of a gift.

Each handler takes a few milliseconds, as a stand-in for real work. A task
whose metadata says ``"flaky": "1"`` fails its first attempt (the queue retries
it after its backoff), so the demo shows retries without leaving anything to
chance: the number of retries is exactly the number of flaky tasks.
"""

from __future__ import annotations

import asyncio
import random

from northpole.tasks.handlers import TaskContext, TaskRegistry

#: The stages of a gift, in order; each is a task type the registry follows.
STAGES = ("build", "wrap", "load", "deliver")

elves = TaskRegistry()


async def _work(ctx: TaskContext, stage: str) -> str:
    await asyncio.sleep(random.uniform(0.001, 0.004))  # noqa: S311 - not a secret
    if ctx.metadata.get("flaky") == "1" and ctx.attempt == 1:
        raise RuntimeError(f"{stage}: the elf dropped gift {ctx.gift_id}")
    return f"{stage} done on attempt {ctx.attempt}"


@elves.handler("build")
async def build(ctx: TaskContext) -> str:
    """Build the toy."""
    return await _work(ctx, "build")


@elves.handler("wrap")
async def wrap(ctx: TaskContext) -> str:
    """Wrap it."""
    return await _work(ctx, "wrap")


@elves.handler("load")
async def load(ctx: TaskContext) -> str:
    """Load it on the sleigh."""
    return await _work(ctx, "load")


@elves.handler("deliver")
async def deliver(ctx: TaskContext) -> str:
    """Deliver it."""
    return await _work(ctx, "deliver")
