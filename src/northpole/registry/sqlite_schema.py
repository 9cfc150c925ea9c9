"""The SQLite registry's schema and SQL, named in one place.

**Schema** (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`), created or
checked by :func:`migrate` when the repository opens its file:

* ``gifts``: the design's table. ``id`` is the INTEGER PRIMARY KEY (the rowid);
  ``created_at`` holds Unix milliseconds (UTC), SQLite having no timestamp
  type. Indexes: ``(created_at, id)``, ``(recipient_id, created_at, id)`` and
  ``(status, created_at, id)``, each the keyset order of one kind of listing.
* ``gift_outbox``: events waiting for the relay. ``AUTOINCREMENT`` keeps ids
  from ever being reused after the newest rows are relayed and deleted: an id
  names its event on the stream (``gift-outbox-<id>``), and a reused one would
  be dropped there as a duplicate.
"""

from __future__ import annotations

import sqlite3

from northpole.core.errors import ConfigurationError
from northpole.core.sqlite import rollback
from northpole.registry.model import MAX_GIFT_TYPE, MAX_RECIPIENT_ID, GiftStatus

SCHEMA_VERSION = 1

_STATUSES = ", ".join(f"'{status.value}'" for status in GiftStatus)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS gifts (
    id           INTEGER PRIMARY KEY,
    workshop_id  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    gift_type    TEXT NOT NULL CHECK (length(gift_type) <= {MAX_GIFT_TYPE}),
    status       TEXT NOT NULL CHECK (status IN ({_STATUSES})),
    recipient_id TEXT NOT NULL CHECK (length(recipient_id) <= {MAX_RECIPIENT_ID})
);
CREATE INDEX IF NOT EXISTS gifts_created_at_idx ON gifts (created_at, id);
CREATE INDEX IF NOT EXISTS gifts_recipient_idx ON gifts (recipient_id, created_at, id);
CREATE INDEX IF NOT EXISTS gifts_status_idx ON gifts (status, created_at, id);
CREATE TABLE IF NOT EXISTS gift_outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    data    BLOB NOT NULL
);
"""

COLUMNS = "id, workshop_id, created_at, gift_type, recipient_id, status"
INSERT_GIFT = f"INSERT INTO gifts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant
SELECT_GIFT = f"SELECT {COLUMNS} FROM gifts WHERE id = ?"  # noqa: S608 - constant
SELECT_GIFTS = f"SELECT {COLUMNS} FROM gifts"  # noqa: S608 - constant
SELECT_STATUSES = "SELECT id, status FROM gifts WHERE id IN ({marks})"
UPDATE_STATUS = "UPDATE gifts SET status = ? WHERE id = ?"
UPDATE_FIELDS = (
    "UPDATE gifts SET gift_type = coalesce(?, gift_type), "
    "recipient_id = coalesce(?, recipient_id) WHERE id = ?"
)
COUNT_BY_STATUS = "SELECT status, count(*) FROM gifts GROUP BY status"

#: Listing filters, each with one ``?``; joined by AND after WHERE.
WHERE_RECIPIENT = "recipient_id = ?"
WHERE_STATUS = "status = ?"
WHERE_SINCE = "created_at >= ?"
WHERE_AFTER = "(created_at, id) > (?, ?)"
ORDER_PAGE = " ORDER BY created_at, id LIMIT ?"

INSERT_OUTBOX = "INSERT INTO gift_outbox (subject, data) VALUES (?, ?)"
SELECT_OUTBOX = "SELECT id, subject, data FROM gift_outbox ORDER BY id LIMIT ?"
DELETE_OUTBOX = "DELETE FROM gift_outbox WHERE id IN ({marks})"
COUNT_OUTBOX = "SELECT count(*) FROM gift_outbox"

#: Most ``?`` placeholders put in one ``IN (...)``.
IN_CHUNK = 500


def marks(count: int) -> str:
    """``?, ?, ...`` with ``count`` placeholders."""
    return ", ".join("?" * count)


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty file, or check an existing one's version.

    Raises:
        ConfigurationError: The file holds a schema of another version.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise ConfigurationError(
            f"registry database has schema version {version}; this northpole "
            f"understands {SCHEMA_VERSION}"
        )
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
        )
    except BaseException:
        rollback(conn)
        raise
