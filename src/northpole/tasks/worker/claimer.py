"""The Claimer: keeps at most ``concurrency + prefetch`` tasks queued or running.

It claims in batches with a long poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import replace

from northpole.core.errors import Unavailable
from northpole.core.lifecycle import check_cancelled
from northpole.core.logging import get_logger
from northpole.tasks.backends import Assignment, Backoff, WorkerBackend
from northpole.tasks.model import MAX_HELD
from northpole.tasks.store import Claim
from northpole.tasks.worker.ledger import HeldTasks

_log = get_logger(__name__)


class Claimer:
    """Claims tasks while there is room, and hands them to ``dispatch``.

    Args:
        backend: Where tasks come from.
        held: The ledger (queued and running tasks count against ``capacity``; with
            those waiting for their ack, it holds at most twice that, and never more
            than :data:`MAX_HELD`).
        dispatch: Called with each claimed task.
        template: The claim (``limit`` set per call).
        capacity: The most tasks queued or running at once (concurrency + prefetch).
        batch: The most tasks one claim asks for.
        wait_s: Long-poll wait of each claim.
        idle_s: Pause after an empty answer (in case the queue does not long-poll).
        backoff: Waits between tries while the queue is unreachable.
    """

    def __init__(
        self,
        backend: WorkerBackend,
        held: HeldTasks,
        *,
        dispatch: Callable[[Assignment], None],
        template: Claim,
        capacity: int,
        batch: int,
        wait_s: float,
        idle_s: float,
        backoff: Backoff,
    ) -> None:
        self._backend = backend
        self._held = held
        self._dispatch = dispatch
        self._template = template
        self._capacity = capacity
        self._max_held = min(2 * capacity, MAX_HELD)
        self._batch = batch
        self._wait_s = wait_s
        self._idle_s = idle_s
        self._backoff = backoff
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._stopped = False
        self._wake = asyncio.Event()

    def stop(self) -> None:
        """Claim no more: :meth:`run` returns once the claim in flight (if any) has answered.

        The claim in flight is not cut short, because the queue would still hand
        over what it finds to a worker no longer listening, and those tasks
        would wait out their leases; its tasks are dispatched and drained.
        """
        self._stopped = True
        self._wake.set()
        self._held.notify()

    async def run(self) -> None:
        """Claim until stopped; an unreachable queue is retried with backoff."""
        failures = 0
        while not self._stopped:
            # Queued and running tasks count against the capacity; tasks waiting for
            # their ack get an allowance of their own (claims go on while acks travel),
            # but a slow queue slows the claims down instead of letting outcomes pile up.
            room = min(self._capacity - self._held.active, self._max_held - len(self._held))
            if room <= 0:
                await self._held.changed()
                continue
            claim = replace(self._template, limit=min(self._batch, room))
            try:
                reply = await self._backend.claim(claim, wait_s=self._wait_s)
                check_cancelled()  # a cancel the driver lost (core.lifecycle)
            except Unavailable as exc:
                failures += 1
                delay = self._backoff.delay_s(failures, self._rng)
                _log.warning("claim failed; retrying", error=str(exc), in_s=round(delay, 3))
                await self._pause(delay)
                continue
            failures = 0
            for assignment in reply.tasks:
                self._dispatch(assignment)
            if not reply.tasks:
                await self._pause(self._idle_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
