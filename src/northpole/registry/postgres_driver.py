"""What the PostgreSQL adapters share: URL forms, driver errors and connections.

``registry.database_url`` takes the usual ``postgresql://user:pass@host:port/db``
(``postgres://`` and ``postgresql+asyncpg://`` are accepted too); SQLAlchemy
gets the ``postgresql+asyncpg://`` form, asyncpg the plain one.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from northpole.core.errors import ConfigurationError, Conflict, NorthpoleError, Unavailable

_SCHEME = re.compile(r"^(postgres|postgresql)(\+asyncpg)?://")

#: Exceptions a driver call may raise that mean "the database did not do it".
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
    SQLAlchemyError,
    OSError,
    TimeoutError,
)


def _check(url: str) -> None:
    if not _SCHEME.match(url):
        raise ConfigurationError(
            "registry.database_url must start with postgresql:// (or postgres://)"
        )


def sqlalchemy_url(url: str) -> str:
    """``url`` in the form SQLAlchemy's asyncpg dialect takes."""
    _check(url)
    return _SCHEME.sub("postgresql+asyncpg://", url, count=1)


def asyncpg_dsn(url: str) -> str:
    """``url`` in the form asyncpg takes."""
    _check(url)
    return _SCHEME.sub("postgresql://", url, count=1)


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, looking through SQLAlchemy's wrapping."""
    orig = getattr(exc, "orig", None)
    for candidate in (exc, orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a unique-key violation (SQLSTATE 23505)."""
    return sqlstate(exc) == "23505"


def driver_error(exc: BaseException, what: str) -> NorthpoleError:
    """Our error for a driver exception (the caller raises it ``from exc``)."""
    if is_unique_violation(exc):
        return Conflict(f"{what}: {_message(exc)}", field="id")
    return Unavailable(f"{what}: {_message(exc)}", retry_after_s=1.0)


def _message(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def connect(url: str, **kwargs: Any) -> Any:
    """Open one asyncpg connection to ``url``.

    Raises:
        Unavailable: The server cannot be reached or refused.
    """
    try:
        return await asyncpg.connect(asyncpg_dsn(url), **kwargs)
    except DRIVER_ERRORS as exc:
        raise Unavailable(f"cannot connect to {redacted(url)}: {_message(exc)}") from exc
