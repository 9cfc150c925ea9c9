"""Alembic migrations of the PostgreSQL registry, run from code (start-up and the CLI).

The scripts live in this package (``northpole/registry/migrations``), so an
installed northpole migrates its database without an ``alembic.ini``.
Concurrent start-ups are safe: each migration run holds a transaction-level
advisory lock (:data:`MIGRATION_LOCK_KEY`) while it checks and upgrades.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

SCRIPT_LOCATION = "northpole.registry:migrations"
#: ``pg_advisory_xact_lock`` key serialising migration runs (``b"giftmigr"``).
MIGRATION_LOCK_KEY = int.from_bytes(b"giftmigr", "big", signed=True)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for this package's scripts (with ``connection`` handed to env.py)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision of the scripts."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package ships its scripts
        raise RuntimeError("no migration scripts found")
    return revision


def _upgrade(connection: Connection, target: str) -> str | None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(alembic_config(connection), target)
    return MigrationContext.configure(connection).get_current_revision()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, target: str = "head") -> str | None:
    """Upgrade the database to ``target``; return the revision it is at afterwards."""
    async with engine.begin() as conn:
        return await conn.run_sync(_upgrade, target)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision (``None``: never migrated)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
