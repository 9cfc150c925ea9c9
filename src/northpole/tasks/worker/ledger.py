"""The ledger: every task the worker holds, and where each one is (queued, running, acking).

Every count the pool asks for per task (how many are queued or running, how many
run) is kept up to date as tasks move, so each costs O(1): the claimer and the
runner ask on every task, and a worker may hold thousands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from northpole.tasks.backends import Assignment
from northpole.tasks.handlers import TaskContext


class Phase(StrEnum):
    """Where a held task is in the worker."""

    QUEUED = "queued"  # claimed, waiting for a slot
    RUNNING = "running"  # its handler runs
    ACKING = "acking"  # its outcome waits to be reported


@dataclass(slots=True, eq=False)
class Held:
    """One task the worker holds."""

    assignment: Assignment
    context: TaskContext
    phase: Phase = Phase.QUEUED
    start_reported: bool = False
    taken_away: bool = False


class HeldTasks:
    """Every task the worker holds, from its claim until its ack lands or it is taken away."""

    def __init__(self) -> None:
        self._held: dict[int, Held] = {}
        self._counts = dict.fromkeys(Phase, 0)
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, assignment: Assignment) -> Held:
        """Start holding a freshly claimed task."""
        context = TaskContext(
            task_id=assignment.task_id,
            gift_id=assignment.gift_id,
            task_type=assignment.task_type,
            metadata=dict(assignment.metadata or {}),
            attempt=assignment.attempt,
            max_retries=assignment.max_retries,
            idempotency_key=assignment.idempotency_key,
            deadline_ms=assignment.deadline_ms,
        )
        held = Held(assignment, context)
        old = self._held.get(assignment.task_id)
        if old is not None:  # back under a new fence before news of the old one arrived
            self._counts[old.phase] -= 1
        self._held[assignment.task_id] = held
        self._counts[Phase.QUEUED] += 1
        self.notify()
        return held

    def move(self, held: Held, phase: Phase) -> None:
        """Move a task to ``phase``."""
        if self._held.get(held.assignment.task_id) is held:
            self._counts[held.phase] -= 1
            self._counts[phase] += 1
        held.phase = phase
        self.notify()

    def get(self, task_id: int, fence: int) -> Held | None:
        """Return the held assignment of ``task_id`` under ``fence``, if any.

        Every lookup names the fence: a task may come back to this worker under a
        new fence while news about its old assignment is still arriving.
        """
        held = self._held.get(task_id)
        return held if held is not None and held.assignment.fence == fence else None

    def release(self, task_id: int, fence: int) -> Held | None:
        """Stop holding an assignment (its ack landed, or it was taken away)."""
        held = self.get(task_id, fence)
        if held is not None:
            del self._held[task_id]
            self._counts[held.phase] -= 1
            self.notify()
        return held

    def take_away(self, task_id: int, fence: int) -> Held | None:
        """Mark an assignment taken away by the queue and set its ``cancelled`` event.

        A queued or acking task is released at once; a running one when its handler returns.
        """
        held = self.get(task_id, fence)
        if held is None:
            return None
        held.taken_away = True
        held.context.cancel()
        if held.phase is not Phase.RUNNING:
            self.release(task_id, fence)
        return held

    def count(self, *phases: Phase) -> int:
        """Return how many tasks are in any of ``phases``."""
        return sum(self._counts[phase] for phase in phases)

    @property
    def active(self) -> int:
        """Tasks queued or running (what counts against the claim limit)."""
        return self._counts[Phase.QUEUED] + self._counts[Phase.RUNNING]

    @property
    def running(self) -> int:
        """Tasks whose handler runs."""
        return self._counts[Phase.RUNNING]

    def holding(self) -> tuple[tuple[int, int], ...]:
        """``(task_id, fence)`` of every held task."""
        return tuple((h.assignment.task_id, h.assignment.fence) for h in self._held.values())

    def unreported_starts(self) -> tuple[tuple[int, int], ...]:
        """``(task_id, fence)`` of held tasks whose handler began and the queue was not told."""
        return tuple(
            (h.assignment.task_id, h.assignment.fence)
            for h in self._held.values()
            if h.phase is not Phase.QUEUED and not h.start_reported
        )

    def mark_reported(self, started: Iterable[tuple[int, int]]) -> None:
        """Remember that the queue was told these ``(task_id, fence)`` started."""
        for task_id, fence in started:
            if (held := self.get(task_id, fence)) is not None:
                held.start_reported = True

    def __len__(self) -> int:
        return len(self._held)

    async def changed(self) -> None:
        """Wait for the next change of any task."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    def notify(self) -> None:
        """Wake everything waiting in :meth:`changed` (nothing to do when nobody waits)."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
