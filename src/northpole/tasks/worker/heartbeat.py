"""The Heartbeater: reports started and held tasks (extending their leases).

It also takes away the tasks the queue names in ``cancel``: their ``cancelled``
event is set and their outcome is never reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from northpole.core.errors import Unavailable
from northpole.core.lifecycle import check_cancelled
from northpole.core.logging import get_logger
from northpole.tasks.backends import WorkerBackend
from northpole.tasks.store import Heartbeat
from northpole.tasks.worker.ledger import HeldTasks

_log = get_logger(__name__)


class Heartbeater:
    """Tells the queue the worker lives, which tasks started and which it holds.

    Args:
        backend: Where heartbeats go.
        held: The ledger.
        template: The worker's identity and lease (``started``/``holding`` filled per beat).
        interval_s: Seconds between beats.
        take_away: Called with ``(task_id, fence)`` of each held task the queue says the
            worker no longer holds (the answer names ids; the fence is the one sent).
    """

    def __init__(
        self,
        backend: WorkerBackend,
        held: HeldTasks,
        *,
        template: Heartbeat,
        interval_s: float,
        take_away: Callable[[int, int], None],
    ) -> None:
        self._backend = backend
        self._held = held
        self._template = template
        self._interval_s = interval_s
        self._take_away = take_away
        #: The partitions the worker owned at the last answer.
        self.partitions: tuple[int, ...] = ()

    async def beat(self) -> None:
        """Send one heartbeat and act on the answer."""
        started = self._held.unreported_starts()
        holding = self._held.holding()
        answer = await self._backend.heartbeat(
            replace(self._template, started=started, holding=holding)
        )
        self._held.mark_reported(started)
        if answer.partitions != self.partitions:
            _log.info("partitions changed", partitions=list(answer.partitions))
            self.partitions = answer.partitions
        sent = dict(holding)
        for task_id in answer.cancel:
            if task_id in sent:  # about the assignment we sent, not a newer one
                self._take_away(task_id, sent[task_id])

    async def beat_first(self) -> None:
        """Send the first beat (which makes the worker known); tolerate an unreachable queue."""
        try:
            await self.beat()
        except Unavailable as exc:
            _log.warning("queue unreachable at start; will keep trying", error=str(exc))

    async def run(self) -> None:
        """Beat every ``interval_s``; an unreachable queue is logged and tried next time."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.beat()
            except Unavailable as exc:
                _log.warning("heartbeat failed", error=str(exc))
            check_cancelled()  # a cancel the driver lost (core.lifecycle)
