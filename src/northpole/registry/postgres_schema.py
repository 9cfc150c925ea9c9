"""The PostgreSQL registry's schema (SQLAlchemy Core) and hand-written SQL, in one place.

**Tables** (created by the Alembic migrations in ``registry/migrations``):

* ``gifts``: the design's table, ``PARTITION BY RANGE (created_at)``, one
  partition per calendar month (UTC) named ``gifts_pYYYY_MM``
  (:mod:`northpole.registry.partitions` creates, detaches and restores them).
  ``created_at`` is a ``TIMESTAMP`` (without time zone) holding UTC. The
  primary key is ``(id, created_at)``: PostgreSQL requires a partitioned
  table's unique keys to include the partition key. It is as strict as a key
  on ``id`` alone, because ``created_at`` is the time encoded in the id: one id
  always comes with the same ``created_at``. Indexes (on every partition):
  ``(created_at, id)``, ``(recipient_id, created_at, id)`` and
  ``(status, created_at, id)``, each the keyset order of one kind of listing.
* ``gift_outbox``: events waiting for the relay; ``id`` is an identity column
  (never reused).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from northpole.registry.model import MAX_GIFT_TYPE, MAX_RECIPIENT_ID, GiftStatus

_STATUSES = ", ".join(f"'{status.value}'" for status in GiftStatus)
_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)

metadata = MetaData()

gifts = Table(
    "gifts",
    metadata,
    Column("id", BigInteger, nullable=False),
    Column("workshop_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("gift_type", String(MAX_GIFT_TYPE), nullable=False),
    Column("status", String(20), nullable=False),
    Column("recipient_id", String(MAX_RECIPIENT_ID), nullable=False),
    PrimaryKeyConstraint("id", "created_at", name="gifts_pkey"),
    CheckConstraint(f"status IN ({_STATUSES})", name="gifts_status_check"),
    Index("gifts_created_at_idx", "created_at", "id"),
    Index("gifts_recipient_idx", "recipient_id", "created_at", "id"),
    Index("gifts_status_idx", "status", "created_at", "id"),
    postgresql_partition_by="RANGE (created_at)",
)

gift_outbox = Table(
    "gift_outbox",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

#: The columns of ``gifts`` in table order (COPY and SELECT use it).
GIFT_COLUMNS = ("id", "workshop_id", "created_at", "gift_type", "status", "recipient_id")
_SELECT = "SELECT id, workshop_id, created_at, gift_type, status, recipient_id FROM gifts"

#: One gift by its key (``created_at`` from the id prunes to one partition).
SELECT_GIFT = _SELECT + " WHERE id = $1 AND created_at = $2"
#: Current statuses of the gifts named by two parallel arrays, locked in id order.
LOCK_STATUSES = (
    "SELECT g.id, g.status FROM gifts g"
    " JOIN unnest($1::bigint[], $2::timestamp[]) AS k(id, created_at)"
    " ON g.id = k.id AND g.created_at = k.created_at"
    " ORDER BY g.id FOR UPDATE OF g"
)
#: New statuses from three parallel arrays.
UPDATE_STATUSES = (
    "UPDATE gifts g SET status = v.status"
    " FROM unnest($1::bigint[], $2::timestamp[], $3::text[]) AS v(id, created_at, status)"
    " WHERE g.id = v.id AND g.created_at = v.created_at"
)
#: The operator's fields (``NULL`` keeps a field).
UPDATE_FIELDS = (
    "UPDATE gifts SET gift_type = coalesce($3, gift_type),"
    " recipient_id = coalesce($4, recipient_id)"
    " WHERE id = $1 AND created_at = $2"
    " RETURNING id, workshop_id, created_at, gift_type, status, recipient_id"
)
#: Outbox rows from two parallel arrays, ids given in array order.
INSERT_OUTBOX = (
    "INSERT INTO gift_outbox (subject, data)"
    " SELECT s, d FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS e(s, d, n) ORDER BY n"
)
COUNT_BY_STATUS = "SELECT status, count(*) FROM gifts GROUP BY status"


def to_timestamp(ms: int) -> datetime:
    """Unix milliseconds as the naive UTC datetime the ``created_at`` column holds."""
    return _EPOCH + ms * _MS


def to_ms(moment: datetime) -> int:
    """A naive UTC ``created_at`` as Unix milliseconds."""
    return (moment - _EPOCH) // _MS
