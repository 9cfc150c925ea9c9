"""Monthly partitions of ``gifts`` on PostgreSQL: created ahead, archived, restored.

Pure part: :class:`Month` (a calendar month in UTC, its bounds and its
partition's name ``gifts_pYYYY_MM``) and :func:`plan_upkeep` (which months to
create, which to archive). I/O part: :class:`PartitionManager`, on an asyncpg
connection.

**Upkeep** (the registry service runs it at start and every
``upkeep_interval_s``; ``northpole registry partitions --ensure`` and
``northpole registry archive`` run it by hand):

1. partitions for the current month and ``partitions_ahead`` months after it
   are created if missing (an insert into a month without one would fail; the
   repository also creates a missing month's partition before writing to it);
2. every partition whose month is more than ``retention_months`` before the
   current one is archived: ``ALTER TABLE gifts DETACH PARTITION``, then
   ``COPY ... TO STDOUT (FORMAT binary)`` streamed through gzip into
   ``<archive_dir>/gifts_pYYYY_MM.pgcopy.gz`` (written to a temporary name,
   fsynced, renamed), a JSON manifest beside it
   (``gifts_pYYYY_MM.json``: bounds, columns, row count, SHA-256 of the file),
   and only then ``DROP TABLE``. A crash after the detach leaves a detached
   ``gifts_p*`` table, which the next run archives.

**Restore** (``northpole registry restore FILE``): the manifest's month is
created as a partition again and the file is copied into it
(``COPY ... FROM STDIN (FORMAT binary)``); a month that already holds rows is
refused. A restored month older than the retention is archived again by the
next upkeep (to the same file name, with the same rows).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from northpole.core.errors import Conflict, InvalidInput, NotFound
from northpole.core.logging import get_logger
from northpole.registry.postgres_schema import GIFT_COLUMNS

_log = get_logger(__name__)

PARENT = "gifts"
_NAME = re.compile(r"^gifts_p(\d{4})_(\d{2})$")
ARCHIVE_SUFFIX = ".pgcopy.gz"
MANIFEST_SUFFIX = ".json"
ARCHIVE_FORMAT = "postgresql-binary-copy+gzip"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """One calendar month (UTC)."""

    year: int
    month: int

    @classmethod
    def of(cls, unix_ms: int) -> Month:
        """The month ``unix_ms`` falls in."""
        moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def parse(cls, text: str) -> Month:
        """Parse ``YYYY-MM`` or a partition name ``gifts_pYYYY_MM``.

        Raises:
            InvalidInput: Neither form, or not a month (``field`` ``month``).
        """
        found = re.fullmatch(r"(\d{4})-(\d{2})", text) or _NAME.match(text)
        if found is None or not 1 <= int(found.group(2)) <= 12:
            raise InvalidInput(f"{text!r} is not a month (YYYY-MM)", field="month")
        return cls(int(found.group(1)), int(found.group(2)))

    def plus(self, months: int) -> Month:
        """The month ``months`` later (earlier if negative)."""
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        """The first instant of the month (naive UTC, as ``created_at`` holds it)."""
        return datetime(self.year, self.month, 1)

    @property
    def end(self) -> datetime:
        """The first instant of the next month."""
        return self.plus(1).start

    @property
    def table(self) -> str:
        """The partition's table name, ``gifts_pYYYY_MM``."""
        return f"gifts_p{self.year:04d}_{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class UpkeepPlan:
    """What one upkeep pass does."""

    create: list[Month]
    archive: list[Month]


def plan_upkeep(
    now_ms: int, attached: Sequence[Month], *, ahead: int, retention_months: int
) -> UpkeepPlan:
    """Decide which partitions to create and which to archive.

    Args:
        now_ms: The current time.
        attached: The months that have a partition now.
        ahead: Months after the current one to have partitions for.
        retention_months: Partitions of months before ``current - retention_months``
            are archived.
    """
    current = Month.of(now_ms)
    wanted = [current.plus(i) for i in range(ahead + 1)]
    have = set(attached)
    oldest_kept = current.plus(-retention_months)
    return UpkeepPlan(
        create=[m for m in wanted if m not in have],
        archive=sorted(m for m in have if m < oldest_kept),
    )


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived partition."""

    month: Month
    path: Path
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as listed."""

    month: Month
    attached: bool
    rows_estimate: int


def archive_paths(directory: Path, month: Month) -> tuple[Path, Path]:
    """The data file and manifest of ``month``'s archive."""
    return (
        directory / f"{month.table}{ARCHIVE_SUFFIX}",
        directory / f"{month.table}{MANIFEST_SUFFIX}",
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(json.dumps(body, indent=2, sort_keys=True).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class _GzipSink:
    """Receives COPY output chunks and writes them compressed, off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)

    async def __call__(self, chunk: bytes) -> None:
        await asyncio.to_thread(self._gz.write, chunk)

    def finish(self) -> None:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()

    def abort(self) -> None:
        self._gz.close()
        self._raw.close()
        self.path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    src = await asyncio.to_thread(gzip.open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(src.read, _CHUNK):
            yield chunk
    finally:
        src.close()


class PartitionManager:
    """Creates, lists, archives and restores the monthly partitions of ``gifts``.

    Args:
        conn: An asyncpg connection (used outside any transaction).
        archive_dir: Where archives are written (created if missing).
    """

    def __init__(self, conn: Any, *, archive_dir: Path) -> None:
        self._conn = conn
        self.archive_dir = archive_dir

    @property
    def connection(self) -> Any:
        """The asyncpg connection it works on."""
        return self._conn

    async def attached(self) -> list[Month]:
        """The months that have a partition attached to ``gifts``."""
        rows = await self._conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'gifts'::regclass"
        )
        return sorted(Month.parse(r[0]) for r in rows if _NAME.match(r[0]))

    async def detached(self) -> list[Month]:
        """Months whose partition was detached but not archived yet (an interrupted run)."""
        rows = await self._conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition"
            " AND relname LIKE 'gifts\\_p%' AND relnamespace = 'public'::regnamespace"
        )
        return sorted(Month.parse(r[0]) for r in rows if _NAME.match(r[0]))

    async def overview(self) -> list[PartitionInfo]:
        """Every partition, attached or left detached, with its planner's row estimate."""
        attached = set(await self.attached())
        months = sorted(attached | set(await self.detached()))
        out = []
        for month in months:
            estimate = await self._conn.fetchval(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = $1",
                month.table,
            )
            out.append(PartitionInfo(month, month in attached, int(estimate or 0)))
        return out

    async def ensure(self, months: Sequence[Month]) -> list[Month]:
        """Create the partitions of ``months`` that do not exist; return those created."""
        created = []
        have = set(await self.attached())
        for month in months:
            if month in have:
                continue
            await self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {month.table} PARTITION OF {PARENT}"
                f" FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
            )
            created.append(month)
            _log.info("partition created", partition=month.table)
        return created

    async def upkeep(
        self, now_ms: int, *, ahead: int, retention_months: int
    ) -> tuple[list[Month], list[Archived]]:
        """Create partitions ahead and archive those past retention (and leftovers)."""
        plan = plan_upkeep(
            now_ms, await self.attached(), ahead=ahead, retention_months=retention_months
        )
        created = await self.ensure(plan.create)
        todo = sorted(set(plan.archive) | set(await self.detached()))
        archived = [await self.archive(month) for month in todo]
        return created, archived

    async def archive(self, month: Month) -> Archived:
        """Detach ``month``'s partition, write it to a compressed file, then drop it.

        Raises:
            NotFound: The month has no partition (attached or detached).
        """
        table = month.table
        if month in await self.attached():
            await self._conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {table}")
        elif month not in await self.detached():
            raise NotFound(f"no partition for {month}", field="month")
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        data, manifest = archive_paths(self.archive_dir, month)
        tmp = data.with_name(data.name + ".tmp")
        sink = _GzipSink(tmp)
        try:
            status = await self._conn.copy_from_table(
                table, columns=list(GIFT_COLUMNS), output=sink, format="binary"
            )
            await asyncio.to_thread(sink.finish)
        except BaseException:
            sink.abort()
            raise
        tmp.replace(data)
        rows = int(str(status).split()[-1])
        size = data.stat().st_size
        _write_json(
            manifest,
            {
                "table": table,
                "month": str(month),
                "from": month.start.isoformat(),
                "to": month.end.isoformat(),
                "columns": list(GIFT_COLUMNS),
                "rows": rows,
                "format": ARCHIVE_FORMAT,
                "file": data.name,
                "sha256": await asyncio.to_thread(_sha256, data),
                "archived_at": datetime.now(UTC).isoformat(),
            },
        )
        _fsync_dir(self.archive_dir)
        await self._conn.execute(f"DROP TABLE {table}")
        _log.info("partition archived", partition=table, rows=rows, path=str(data))
        return Archived(month, data, rows, size)

    async def restore(self, path: Path) -> Archived:
        """Attach an archived month again and load its rows.

        Args:
            path: The archive's data file or its manifest.

        Raises:
            InvalidInput: Not an archive this registry wrote, or its checksum differs.
            Conflict: The month's partition exists and holds rows.
        """
        manifest_path = path if path.suffix == MANIFEST_SUFFIX else _manifest_of(path)
        manifest = _read_manifest(manifest_path)
        month = Month.parse(str(manifest.get("month", "")))
        data = manifest_path.with_name(str(manifest["file"]))
        if await asyncio.to_thread(_sha256, data) != manifest.get("sha256"):
            raise InvalidInput(f"{data} does not match its manifest's checksum", field="file")
        await self.ensure([month])
        exists = await self._conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {month.table})")  # noqa: S608
        if exists:
            raise Conflict(f"partition {month.table} already holds rows", field="month")
        status = await self._conn.copy_to_table(
            month.table, source=_chunks(data), columns=list(GIFT_COLUMNS), format="binary"
        )
        rows = int(str(status).split()[-1])
        _log.info("partition restored", partition=month.table, rows=rows)
        return Archived(month, data, rows, data.stat().st_size)


def _manifest_of(path: Path) -> Path:
    name = path.name
    if not name.endswith(ARCHIVE_SUFFIX):
        raise InvalidInput(f"{path} is not a {ARCHIVE_SUFFIX} archive", field="file")
    return path.with_name(name[: -len(ARCHIVE_SUFFIX)] + MANIFEST_SUFFIX)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read archive manifest {path}: {exc}", field="file") from exc
    if not isinstance(body, dict) or body.get("format") != ARCHIVE_FORMAT:
        raise InvalidInput(f"{path} is not a gift archive manifest", field="file")
    if body.get("columns") != list(GIFT_COLUMNS):
        raise InvalidInput(f"{path} holds other columns than this schema", field="file")
    return body
