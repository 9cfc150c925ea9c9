"""Coalescing of concurrent calls into batches: one round trip for many acknowledgements.

A caller hands :meth:`Coalescer.submit` one item and awaits its own result.
Items that arrive while a batch is in flight (or in the same event-loop turn)
go together in the next batch, so under load a batch grows to whatever queued
up meanwhile, and alone a call waits for nobody. The batch function returns one
result per item; if it raises, every item of that batch gets the exception.
A caller whose await is cancelled does not take its item back: it is sent anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

_I = TypeVar("_I")

BatchFn = Callable[[Sequence[_I]], Awaitable[Sequence[Any]]]


class Coalescer(Generic[_I]):
    """Runs ``batch`` over items submitted concurrently (see the module docstring).

    Args:
        batch: Called with the queued items; returns their results in order.
        max_items: Most items per batch.
    """

    def __init__(self, batch: BatchFn[_I], *, max_items: int = 10_000) -> None:
        self._batch = batch
        self._max = max_items
        self._queue: list[tuple[_I, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: _I) -> Any:
        """Queue ``item`` and return its result (or raise the batch's exception)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="redis-coalescer")
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait until every queued item has been sent and answered."""
        runner = self._runner
        if runner is not None:
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self) -> None:
        taken: list[tuple[_I, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                await asyncio.sleep(0)  # let callers of this loop turn join the batch
                taken, self._queue = self._queue[: self._max], self._queue[self._max :]
                try:
                    results = await self._batch([item for item, _ in taken])
                except Exception as exc:  # every item of the batch shares its failure
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(taken, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except BaseException:
            for _, future in [*taken, *self._queue]:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._runner = None
