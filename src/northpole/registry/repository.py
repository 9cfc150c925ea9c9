"""The GiftRepository port: where gifts and their outbox live.

Two implementations run one contract suite
(``tests/contract/test_gift_repository_contract.py``):

* :class:`~northpole.registry.sqlite_repository.SqliteGiftRepository`: one
  SQLite file (embedded edition);
* :class:`~northpole.registry.postgres_repository.PostgresGiftRepository`:
  PostgreSQL, ``gifts`` range-partitioned by month (cluster edition).

Every method that changes gifts also writes the matching events
(:mod:`northpole.registry.events`) to the repository's outbox table in the
same transaction: the change and its events are stored together or not at all.
:attr:`GiftRepository.outbox` is that table as an
:class:`~northpole.bus.outbox.OutboxSource` for an
:class:`~northpole.bus.outbox.OutboxRelay`.

A method called before ``open`` or after ``close`` raises
:class:`~northpole.core.errors.Unavailable`; driver errors surface as
``Unavailable`` (or ``Conflict``), raised from the driver's exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from northpole.bus.outbox import OutboxSource
from northpole.registry.lifecycle import TaskSignal
from northpole.registry.model import Gift, GiftPage, GiftPatch, GiftQuery, GiftStatus, StatusChange
from northpole.registry.settings import LifecycleTaskTypes


class GiftRepository(Protocol):
    """Gifts, their statuses and their outbox."""

    @property
    def outbox(self) -> OutboxSource:
        """The outbox table the writes of this repository fill."""
        ...

    async def open(self) -> GiftRepository:
        """Connect (and create or check the schema); return ``self``."""
        ...

    async def close(self) -> None:
        """Release connections; calls after this raise Unavailable."""
        ...

    async def create(self, gifts: Sequence[Gift]) -> None:
        """Store new gifts and their ``gift.created`` events, all or none.

        Raises:
            Conflict: A gift with one of the ids exists already (nothing is stored).
        """
        ...

    async def get(self, gift_id: int) -> Gift:
        """Return one gift.

        Raises:
            GiftNotFound: No gift has this id.
        """
        ...

    async def find(self, query: GiftQuery) -> GiftPage:
        """Return one page of gifts matching ``query`` in ``(created_ms, id)`` order."""
        ...

    async def patch(self, gift_id: int, patch: GiftPatch) -> Gift:
        """Change the operator's fields of one gift; return it as stored.

        Raises:
            GiftNotFound: No gift has this id.
        """
        ...

    async def follow(
        self, signals: Sequence[TaskSignal], types: LifecycleTaskTypes
    ) -> list[StatusChange]:
        """Apply task signals to their gifts' statuses in one transaction.

        Each gift's status goes through :func:`~northpole.registry.lifecycle.advance`
        for each of its signals, in order; each change is stored with its
        ``gift.status_changed`` event. Signals of unknown gifts are skipped.

        Returns:
            The changes made, in signal order.
        """
        ...

    async def count_by_status(self) -> dict[GiftStatus, int]:
        """How many gifts are in each status (every status present, zeros included)."""
        ...
