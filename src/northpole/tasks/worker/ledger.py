"""The ledger: every task the worker holds, and where each one is (queued, running, acking)."""

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
        self._changed = asyncio.Event()

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
        self._held[assignment.task_id] = held
        self.notify()
        return held

    def move(self, held: Held, phase: Phase) -> None:
        """Move a task to ``phase``."""
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
        return sum(1 for held in self._held.values() if held.phase in phases)

    @property
    def active(self) -> int:
        """Tasks queued or running (what counts against the claim limit)."""
        return self.count(Phase.QUEUED, Phase.RUNNING)

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
        await self._changed.wait()

    def notify(self) -> None:
        """Wake everything waiting in :meth:`changed`."""
        self._changed.set()
        self._changed = asyncio.Event()
