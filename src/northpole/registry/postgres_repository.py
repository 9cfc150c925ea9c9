"""The cluster edition's gift repository: PostgreSQL, ``gifts`` partitioned by month.

Built on SQLAlchemy 2 Core (the schema, its Alembic migrations, the listing
query) and asyncpg (COPY and the hot paths, on connections of SQLAlchemy's
pool)::

    async with PostgresGiftRepository(url, epoch_ms=epoch) as gifts:
        await gifts.create([...])

``open`` runs the migrations (``migrate=False`` only checks that the database
is at the scripts' head revision).

**Batches.** ``create`` writes gifts with ``COPY ... FROM STDIN (FORMAT
binary)`` (asyncpg ``copy_records_to_table``) and their events the same way
into ``gift_outbox``, both in one transaction; batches smaller than
:data:`COPY_THRESHOLD` use one multi-row ``INSERT ... SELECT FROM unnest(...)``
instead. A month without a partition gets one first (see
:mod:`northpole.registry.partitions`).

**Lookups by id** give ``created_at`` too (the time in the id), so PostgreSQL
prunes to one partition and uses its primary key.

**Durability.** Writes return after ``COMMIT``; with PostgreSQL's default
``fsync=on`` and ``synchronous_commit=on`` an acknowledged write survives
``kill -9`` of both northpole and the server.

**Status changes** lock the gifts' rows (``SELECT ... FOR UPDATE``, in id
order, so concurrent followers cannot deadlock) before deciding, so two
processes following events of the same gift still move it forward only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from northpole.core.errors import ConfigurationError, Unavailable
from northpole.registry import events, lifecycle, migrate
from northpole.registry import postgres_schema as schema
from northpole.registry.lifecycle import TaskSignal
from northpole.registry.model import (
    Gift,
    GiftNotFound,
    GiftPage,
    GiftPatch,
    GiftQuery,
    GiftStatus,
    StatusChange,
    created_ms_of,
)
from northpole.registry.partitions import Archived, Month, PartitionManager
from northpole.registry.postgres_driver import (
    DRIVER_ERRORS,
    connect,
    driver_error,
    redacted,
    sqlalchemy_url,
)
from northpole.registry.postgres_outbox import PostgresOutbox
from northpole.registry.settings import LifecycleTaskTypes
from northpole.registry.sqlite_repository import page_of

#: ``pg_try_advisory_lock`` key of partition upkeep (``b"giftpart"``).
UPKEEP_LOCK_KEY = int.from_bytes(b"giftpart", "big", signed=True)
#: Batches of at least this many gifts are written with COPY.
COPY_THRESHOLD = 64

_INSERT_GIFTS = (
    "INSERT INTO gifts (id, workshop_id, created_at, gift_type, status, recipient_id)"
    " SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamp[], $4::text[],"
    " $5::text[], $6::text[])"
)


def _gift(row: Sequence[Any]) -> Gift:
    return Gift(
        id=row[0],
        workshop_id=row[1],
        created_ms=schema.to_ms(row[2]),
        gift_type=row[3],
        status=GiftStatus(row[4]),
        recipient_id=row[5],
    )


def _record(gift: Gift) -> tuple[Any, ...]:
    return (
        gift.id,
        gift.workshop_id,
        schema.to_timestamp(gift.created_ms),
        gift.gift_type,
        gift.status.value,
        gift.recipient_id,
    )


def listing(query: GiftQuery) -> Select[Any]:
    """The SQLAlchemy Core SELECT of one page of ``query`` (one row more than fits)."""
    gifts = schema.gifts
    stmt = select(*(gifts.c[name] for name in schema.GIFT_COLUMNS))
    if query.recipient_id is not None:
        stmt = stmt.where(gifts.c.recipient_id == query.recipient_id)
    if query.status is not None:
        stmt = stmt.where(gifts.c.status == query.status.value)
    if query.since_ms is not None:
        stmt = stmt.where(gifts.c.created_at >= schema.to_timestamp(query.since_ms))
    if query.after is not None:
        after = (schema.to_timestamp(query.after.created_ms), query.after.id)
        stmt = stmt.where(tuple_(gifts.c.created_at, gifts.c.id) > tuple_(*after))
    return stmt.order_by(gifts.c.created_at, gifts.c.id).limit(query.limit + 1)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise driver_error(exc, what) from exc


class PostgresGiftRepository:
    """Gifts and their outbox in PostgreSQL.

    Args:
        url: ``postgresql://user:pass@host:port/db``.
        epoch_ms: The Gift ID epoch (a gift's ``created_at`` is read from its id).
        pool_size: Connections kept open.
        archive_dir: Where :meth:`partitions` archives months.
        migrate: Upgrade the schema on ``open`` (else only check it is current).
    """

    def __init__(
        self,
        url: str,
        *,
        epoch_ms: int,
        pool_size: int = 8,
        archive_dir: Path | None = None,
        migrate: bool = True,
    ) -> None:
        sqlalchemy_url(url)  # checks the form now
        self.url = url
        self.epoch_ms = epoch_ms
        self.archive_dir = archive_dir
        self._pool_size = pool_size
        self._migrate = migrate
        self._engine: AsyncEngine | None = None
        self._months: set[Month] = set()
        self._outbox = PostgresOutbox(self._connect)

    async def _connect(self) -> Any:
        return await connect(self.url)

    @property
    def outbox(self) -> PostgresOutbox:
        """The ``gift_outbox`` table (one relay at a time: see :mod:`northpole.registry.outbox`)."""
        return self._outbox

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (Unavailable outside open/close)."""
        if self._engine is None:
            raise Unavailable("the gift registry database is not open")
        return self._engine

    async def open(self) -> PostgresGiftRepository:
        """Create the pool and migrate (or check) the schema; return ``self``.

        Raises:
            Unavailable: The database cannot be reached.
            ConfigurationError: ``migrate=False`` and the schema is not current.
        """
        engine = create_async_engine(
            sqlalchemy_url(self.url),
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            pool_timeout=30,
        )
        try:
            with _translated(f"gift registry {redacted(self.url)}"):
                if self._migrate:
                    await migrate.upgrade(engine)
                else:
                    await self._check_revision(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        return self

    async def _check_revision(self, engine: AsyncEngine) -> None:
        have, want = await migrate.current(engine), migrate.head()
        if have != want:
            raise ConfigurationError(
                f"gift registry schema is at revision {have}, northpole needs {want}: "
                "run 'northpole registry migrate'"
            )

    async def close(self) -> None:
        """Close the outbox's connection and the pool."""
        await self._outbox.close()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> PostgresGiftRepository:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def raw(self) -> AsyncIterator[Any]:
        """An asyncpg connection from the pool, outside any transaction."""
        async with self.engine.connect() as conn:
            fairy = await conn.get_raw_connection()
            yield fairy.driver_connection

    @contextlib.asynccontextmanager
    async def partitions(self) -> AsyncIterator[PartitionManager]:
        """A partition manager on a pooled connection.

        Raises:
            ConfigurationError: No ``archive_dir`` was given.
        """
        if self.archive_dir is None:
            raise ConfigurationError("the registry has no archive directory")
        async with self.raw() as conn:
            yield PartitionManager(conn, archive_dir=self.archive_dir)

    async def upkeep(
        self, now_ms: int, *, ahead: int, retention_months: int
    ) -> tuple[list[Month], list[Archived]]:
        """Create partitions ahead and archive old ones (see :mod:`northpole.registry.partitions`).

        Runs in one process at a time (a session advisory lock, :data:`UPKEEP_LOCK_KEY`);
        the others return ``([], [])`` at once.
        """
        with _translated("gift registry partition upkeep"):
            async with self.partitions() as manager:
                conn = manager.connection
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", UPKEEP_LOCK_KEY):
                    return [], []
                try:
                    return await manager.upkeep(
                        now_ms, ahead=ahead, retention_months=retention_months
                    )
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", UPKEEP_LOCK_KEY)

    def _created_at(self, gift_id: int) -> Any:
        return schema.to_timestamp(created_ms_of(gift_id, epoch_ms=self.epoch_ms))

    async def _ensure_months(self, conn: Any, gifts: Sequence[Gift]) -> None:
        missing = {Month.of(g.created_ms) for g in gifts} - self._months
        if missing:
            manager = PartitionManager(conn, archive_dir=self.archive_dir or Path("."))
            await manager.ensure(sorted(missing))
            self._months |= missing

    async def create(self, gifts: Sequence[Gift]) -> None:
        """Store new gifts and their ``gift.created`` events, all or none."""
        if not gifts:
            return
        records = [_record(gift) for gift in gifts]
        outbox = [events.created_event(gift) for gift in gifts]
        with _translated("gift registry create"):
            async with self.raw() as conn:
                await self._ensure_months(conn, gifts)
                async with conn.transaction():
                    if len(records) >= COPY_THRESHOLD:
                        await conn.copy_records_to_table(
                            "gifts", records=records, columns=schema.GIFT_COLUMNS
                        )
                        await conn.copy_records_to_table(
                            "gift_outbox", records=outbox, columns=("subject", "data")
                        )
                    else:
                        await conn.execute(_INSERT_GIFTS, *zip(*records, strict=True))
                        await conn.execute(schema.INSERT_OUTBOX, *zip(*outbox, strict=True))

    async def get(self, gift_id: int) -> Gift:
        """Return one gift (GiftNotFound if none)."""
        with _translated("gift registry get"):
            async with self.raw() as conn:
                row = await conn.fetchrow(schema.SELECT_GIFT, gift_id, self._created_at(gift_id))
        if row is None:
            raise GiftNotFound(gift_id)
        return _gift(row)

    async def find(self, query: GiftQuery) -> GiftPage:
        """Return one page of gifts matching ``query``."""
        with _translated("gift registry find"):
            async with self.engine.connect() as conn:
                rows = (await conn.execute(listing(query))).all()
        return page_of([_gift(row) for row in rows], query.limit)

    async def patch(self, gift_id: int, patch: GiftPatch) -> Gift:
        """Change the operator's fields of one gift; return it."""
        with _translated("gift registry patch"):
            async with self.raw() as conn:
                row = await conn.fetchrow(
                    schema.UPDATE_FIELDS,
                    gift_id,
                    self._created_at(gift_id),
                    patch.gift_type,
                    patch.recipient_id,
                )
        if row is None:
            raise GiftNotFound(gift_id)
        return _gift(row)

    async def follow(
        self, signals: Sequence[TaskSignal], types: LifecycleTaskTypes
    ) -> list[StatusChange]:
        """Apply task signals to their gifts' statuses in one transaction."""
        ids = sorted({signal.gift_id for signal in signals})
        if not ids:
            return []
        with _translated("gift registry status change"):
            async with self.raw() as conn, conn.transaction():
                rows = await conn.fetch(
                    schema.LOCK_STATUSES, ids, [self._created_at(i) for i in ids]
                )
                current = {row[0]: GiftStatus(row[1]) for row in rows}
                changes = lifecycle.plan(current, signals, types)
                final = lifecycle.final_statuses(changes)
                if final:
                    changed = list(final)
                    await conn.execute(
                        schema.UPDATE_STATUSES,
                        changed,
                        [self._created_at(i) for i in changed],
                        [final[i].value for i in changed],
                    )
                    outbox = [events.status_event(change) for change in changes]
                    await conn.execute(schema.INSERT_OUTBOX, *zip(*outbox, strict=True))
        return changes

    async def count_by_status(self) -> dict[GiftStatus, int]:
        """How many gifts are in each status."""
        counts = dict.fromkeys(GiftStatus, 0)
        with _translated("gift registry count"):
            async with self.raw() as conn:
                for status, count in await conn.fetch(schema.COUNT_BY_STATUS):
                    counts[GiftStatus(status)] = int(count)
        return counts
