"""Alembic environment of the gift registry.

Run programmatically (:func:`northpole.registry.migrate.upgrade`), which hands
over an open connection in ``config.attributes["connection"]``; or by the
``alembic`` tool with ``-x url=postgresql://...`` (or ``sqlalchemy.url``), for
which it opens its own (asyncpg) connection.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from northpole.registry.postgres_driver import sqlalchemy_url
from northpole.registry.postgres_schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_own_connection(url: str) -> None:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def _offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database: alembic -x url=postgresql://... upgrade head")
    asyncio.run(_run_own_connection(url))


if context.is_offline_mode():
    _offline()
else:
    _online()
