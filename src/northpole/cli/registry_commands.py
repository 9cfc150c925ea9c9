"""``northpole registry migrate|partitions|archive|restore``: the gift registry's database.

These commands work on the database directly (no server needed). The
database is ``--database-url`` (``NORTHPOLE_REGISTRY__DATABASE_URL``), or the
SQLite file in the data directory when none is given. ``migrate`` works on
both; ``partitions``, ``archive`` and ``restore`` manage PostgreSQL's monthly
partitions (see ``docs/registry.md``). Results go to stdout (a table, or JSON
with ``--json``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from northpole.core.clock import SystemClock
from northpole.core.errors import ConfigurationError
from northpole.core.settings import Settings
from northpole.registry.partitions import Month
from northpole.registry.service import ARCHIVE_DIR, REGISTRY_DB

app = typer.Typer(help="The gift registry's database.", no_args_is_help=True)
T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="NORTHPOLE_REGISTRY__DATABASE_URL",
        help="PostgreSQL URL; without one, the SQLite file in the data directory.",
        show_default=False,
    ),
]
ArchiveDir = Annotated[
    Path | None,
    typer.Option(
        "--archive-dir",
        envvar="NORTHPOLE_REGISTRY__ARCHIVE_DIR",
        help="Where archives go (default <data dir>/archive).",
        show_default=False,
    ),
]
Ahead = Annotated[
    int,
    typer.Option("--ahead", envvar="NORTHPOLE_REGISTRY__PARTITIONS_AHEAD", min=1, max=120),
]
Retention = Annotated[
    int,
    typer.Option(
        "--retention-months", envvar="NORTHPOLE_REGISTRY__RETENTION_MONTHS", min=1, max=1200
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(work())


def _print(value: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(table)


def _postgres(url: str | None, archive_dir: Path | None) -> Any:
    if url is None:
        raise ConfigurationError(
            "partitions exist on PostgreSQL only: give --database-url "
            "(or NORTHPOLE_REGISTRY__DATABASE_URL)"
        )
    from northpole.registry.postgres_repository import PostgresGiftRepository

    settings = Settings()
    return PostgresGiftRepository(
        url,
        epoch_ms=settings.idgen.epoch_ms,
        pool_size=1,
        archive_dir=archive_dir or settings.data_dir / ARCHIVE_DIR,
    )


@app.command("migrate")
def migrate(database_url: DatabaseUrl = None, as_json: AsJson = False) -> None:
    """Create or upgrade the registry's schema (Alembic on PostgreSQL)."""

    async def work() -> dict[str, Any]:
        if database_url is None:
            from northpole.registry.sqlite_repository import SqliteGiftRepository
            from northpole.registry.sqlite_schema import SCHEMA_VERSION

            data_dir = Settings().ensure_data_dir()
            async with SqliteGiftRepository(data_dir / REGISTRY_DB):
                return {"database": str(data_dir / REGISTRY_DB), "version": SCHEMA_VERSION}
        from northpole.registry import migrate as migrations
        from northpole.registry.postgres_driver import redacted

        async with _postgres(database_url, None) as repo:
            version = await migrations.current(repo.engine)
            return {"database": redacted(database_url), "version": version}

    result = _run(work)
    if as_json:
        _print(result, True)
    else:
        typer.echo(f"{result['database']}: at {result['version']}")


@app.command("partitions")
def partitions(
    database_url: DatabaseUrl = None,
    ensure: Annotated[
        bool, typer.Option("--ensure", help="First create missing partitions ahead.")
    ] = False,
    ahead: Ahead = 3,
    as_json: AsJson = False,
) -> None:
    """List the monthly partitions of ``gifts`` (and create those ahead with --ensure)."""

    async def work() -> list[dict[str, Any]]:
        async with _postgres(database_url, None) as repo, repo.partitions() as manager:
            if ensure:
                now = Month.of(SystemClock().now_ms())
                await manager.ensure([now.plus(i) for i in range(ahead + 1)])
            return [
                {
                    "month": str(p.month),
                    "table": p.month.table,
                    "attached": p.attached,
                    "rows_estimate": p.rows_estimate,
                }
                for p in await manager.overview()
            ]

    rows = _run(work)
    table = Table("month", "table", "attached", "rows (estimate)")
    for row in rows:
        table.add_row(row["month"], row["table"], str(row["attached"]), str(row["rows_estimate"]))
    _print(rows, as_json, table)


@app.command("archive")
def archive(
    database_url: DatabaseUrl = None,
    archive_dir: ArchiveDir = None,
    month: Annotated[
        str | None,
        typer.Option("--month", help="Archive this month (YYYY-MM) now, whatever its age."),
    ] = None,
    ahead: Ahead = 3,
    retention_months: Retention = 12,
    as_json: AsJson = False,
) -> None:
    """Run partition upkeep now: create partitions ahead, archive those past retention."""

    async def work() -> list[dict[str, Any]]:
        async with _postgres(database_url, archive_dir) as repo:
            if month is not None:
                async with repo.partitions() as manager:
                    done = [await manager.archive(Month.parse(month))]
            else:
                _, done = await repo.upkeep(
                    SystemClock().now_ms(), ahead=ahead, retention_months=retention_months
                )
            return [
                {"month": str(a.month), "file": str(a.path), "rows": a.rows, "bytes": a.bytes}
                for a in done
            ]

    rows = _run(work)
    table = Table("month", "rows", "bytes", "file")
    for row in rows:
        table.add_row(row["month"], str(row["rows"]), str(row["bytes"]), row["file"])
    _print(rows, as_json, table)


@app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="An archive (.pgcopy.gz) or its manifest (.json).")],
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Attach an archived month again and load its rows."""

    async def work() -> dict[str, Any]:
        async with _postgres(database_url, file.parent) as repo, repo.partitions() as manager:
            done = await manager.restore(file)
            return {"month": str(done.month), "table": done.month.table, "rows": done.rows}

    result = _run(work)
    if as_json:
        _print(result, True)
    else:
        typer.echo(f"restored {result['rows']} gifts into {result['table']}")
