"""The Acker: reports outcomes in batches and retries them while the queue is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from northpole.core.errors import Unavailable
from northpole.core.lifecycle import check_cancelled
from northpole.core.logging import get_logger
from northpole.tasks.backends import (
    Ack,
    AckResult,
    Backoff,
    Completion,
    Failure,
    RemoteError,
    WorkerBackend,
)

_log = get_logger(__name__)


class Acker:
    """Reports outcomes in batches: flushes ~``flush_s`` after the first waits, or when full.

    Args:
        backend: Where acks go.
        worker_id: Whose acks they are.
        on_result: Called with each ack and how the queue took it.
        flush_s: The most an outcome waits for company.
        max_batch: The most acks in one call.
        backoff: Waits between tries while the queue is unreachable.
    """

    def __init__(
        self,
        backend: WorkerBackend,
        worker_id: str,
        *,
        on_result: Callable[[Ack, AckResult], None],
        flush_s: float = 0.01,
        max_batch: int = 100,
        backoff: Backoff | None = None,
    ) -> None:
        self._backend = backend
        self._worker_id = worker_id
        self._on_result = on_result
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._backoff = backoff or Backoff()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._pending: dict[tuple[int, int], Ack] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False

    def submit(self, ack: Ack) -> None:
        """Queue one ack."""
        self._pending[ack.task_id, ack.fence] = ack
        self._wake.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()

    def discard(self, task_id: int, fence: int) -> None:
        """Drop a queued ack (its task was taken away)."""
        self._pending.pop((task_id, fence), None)

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Flush what is queued without waiting for company, then let :meth:`run` return."""
        self._closing = True
        self._wake.set()
        self._full.set()

    async def run(self) -> None:
        """Send batches until closed and empty; transient errors are retried with backoff."""
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = list(self._pending.values())[: self._max_batch]
            try:
                await self._send(batch)
                check_cancelled()  # a cancel the driver lost (core.lifecycle)
            except Unavailable as exc:
                failures += 1
                delay = self._backoff.delay_s(failures, self._rng)
                _log.warning("acks not delivered; retrying", error=str(exc), count=len(batch))
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _gather(self) -> None:
        if self._closing or len(self._pending) >= self._max_batch:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._flush_s):
                await self._full.wait()

    async def _send(self, batch: list[Ack]) -> None:
        completed = [a for a in batch if isinstance(a, Completion)]
        failed = [a for a in batch if isinstance(a, Failure)]
        try:
            results = await self._backend.ack(self._worker_id, completed, failed)
        except RemoteError as exc:
            if exc.status_code in (401, 403):
                raise
            # The queue refused the batch itself: its tasks come back after their leases.
            _log.error("acks refused", code=exc.code, error=exc.message, count=len(batch))
            results = [AckResult(a.task_id, ok=False, error_code=exc.code) for a in batch]
        by_id = {result.task_id: result for result in results}
        for ack in batch:
            if self._pending.get((ack.task_id, ack.fence)) is ack:
                del self._pending[ack.task_id, ack.fence]
            result = by_id.get(ack.task_id) or AckResult(ack.task_id, False, None, "no_result")
            self._on_result(ack, result)
