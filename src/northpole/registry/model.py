"""The gift registry's records: gifts, their statuses, queries and pages (pure values).

A gift's ``id`` is a Gift ID from the generator, and its ``created_ms`` and
``workshop_id`` are the ones encoded in that id (:func:`new_gift`): a gift is
"created" when its id is issued. So the partition a gift lives in on
PostgreSQL (by ``created_at``) follows from its id alone, and a lookup by id
touches one partition.

Times are Unix milliseconds (UTC) throughout.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from enum import StrEnum

from northpole.core.errors import InvalidInput, NotFound
from northpole.idgen import decode
from northpole.idgen.snowflake import MAX_WORKSHOP_ID, TIMESTAMP_SHIFT, WORKSHOP_SHIFT

#: Longest ``gift_type`` (the design's VARCHAR(50)).
MAX_GIFT_TYPE = 50
#: Longest ``recipient_id`` (the design's VARCHAR(100)).
MAX_RECIPIENT_ID = 100
#: Most gifts one page of a listing may hold.
MAX_PAGE = 1_000

_CURSOR = struct.Struct(">qq")


class GiftStatus(StrEnum):
    """Where a gift is; statuses only move forward (see :mod:`northpole.registry.lifecycle`).

    ::

        REQUESTED -> IN_PRODUCTION -> WRAPPED -> LOADED -> DELIVERED
            \\______________\\______________\\________\\______> FAILED
    """

    REQUESTED = "REQUESTED"
    IN_PRODUCTION = "IN_PRODUCTION"
    WRAPPED = "WRAPPED"
    LOADED = "LOADED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"

    @property
    def rank(self) -> int:
        """Position along the lifecycle (FAILED ranks last: nothing follows it)."""
        return _RANK[self]

    @property
    def is_final(self) -> bool:
        """Whether the gift can never change status again."""
        return self in (GiftStatus.DELIVERED, GiftStatus.FAILED)


_RANK = {status: index for index, status in enumerate(GiftStatus)}


@dataclass(frozen=True, slots=True)
class Gift:
    """A gift as stored (one row of the design's ``gifts`` table).

    Attributes:
        id: The Gift ID.
        workshop_id: The workshop that issued the id.
        created_ms: When the id was issued (Unix ms); the partition key.
        gift_type: What the gift is (at most 50 characters).
        recipient_id: Who gets it (at most 100 characters).
        status: Where it is in its lifecycle.
    """

    id: int
    workshop_id: int
    created_ms: int
    gift_type: str
    recipient_id: str
    status: GiftStatus = GiftStatus.REQUESTED


@dataclass(frozen=True, slots=True)
class NewGift:
    """What a caller asks to register; the registry adds id, workshop, time and status."""

    gift_type: str
    recipient_id: str


@dataclass(frozen=True, slots=True)
class GiftPatch:
    """The fields an operator may change; ``None`` leaves a field as it is."""

    gift_type: str | None = None
    recipient_id: str | None = None

    @property
    def empty(self) -> bool:
        """Whether the patch changes nothing."""
        return self.gift_type is None and self.recipient_id is None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last gift's ``(created_ms, id)``."""

    created_ms: int
    id: int

    def encode(self) -> str:
        """The opaque wire form (URL-safe base64, no padding)."""
        raw = _CURSOR.pack(self.created_ms, self.id)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse the wire form.

        Raises:
            InvalidInput: ``text`` is not a cursor this registry issued (``field`` ``cursor``).
        """
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_ms, gift_id = _CURSOR.unpack(raw)
        except (binascii.Error, struct.error, ValueError) as exc:
            raise InvalidInput("cursor is not one this API returned", field="cursor") from exc
        if created_ms < 0 or gift_id < 0:
            raise InvalidInput("cursor is not one this API returned", field="cursor")
        return cls(created_ms, gift_id)


@dataclass(frozen=True, slots=True)
class GiftQuery:
    """A listing: filters, and where the previous page ended.

    Gifts come in ``(created_ms, id)`` order, oldest first.

    Attributes:
        recipient_id: Only this recipient's gifts.
        status: Only gifts in this status.
        since_ms: Only gifts created at or after this time.
        after: Only gifts after this position (the previous page's cursor).
        limit: Most gifts on the page.
    """

    recipient_id: str | None = None
    status: GiftStatus | None = None
    since_ms: int | None = None
    after: Cursor | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class GiftPage:
    """One page of a listing; ``next`` is ``None`` on the last page."""

    gifts: list[Gift]
    next: Cursor | None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status change of one gift, as stored in the outbox.

    Attributes:
        gift_id: The gift.
        old: The status before.
        new: The status after.
        at_ms: When the task event that caused it happened.
        cause: Why, for people (``"task 123 wrap COMPLETED"``).
    """

    gift_id: int
    old: GiftStatus
    new: GiftStatus
    at_ms: int
    cause: str


class GiftNotFound(NotFound):
    """No gift has this id (it may also have been archived)."""

    def __init__(self, gift_id: int) -> None:
        super().__init__(f"gift {gift_id} not found", field="id")
        self.gift_id = gift_id


def new_gift(gift_id: int, request: NewGift, *, epoch_ms: int) -> Gift:
    """Return the REQUESTED gift ``request`` becomes under id ``gift_id``.

    ``workshop_id`` and ``created_ms`` are read from the id (issued against
    ``epoch_ms``); the id comes from the generator, so it is not checked again
    (this runs once per gift of a 10,000-gift batch).
    """
    return Gift(
        gift_id,
        (gift_id >> WORKSHOP_SHIFT) & MAX_WORKSHOP_ID,
        (gift_id >> TIMESTAMP_SHIFT) + epoch_ms,
        request.gift_type,
        request.recipient_id,
    )


def created_ms_of(gift_id: int, *, epoch_ms: int) -> int:
    """When the gift with ``gift_id`` was created: the id's timestamp (Unix ms)."""
    return decode(gift_id, epoch_ms=epoch_ms).unix_ms


def patched(gift: Gift, patch: GiftPatch) -> Gift:
    """Return ``gift`` with the patch's fields applied."""
    return Gift(
        id=gift.id,
        workshop_id=gift.workshop_id,
        created_ms=gift.created_ms,
        gift_type=gift.gift_type if patch.gift_type is None else patch.gift_type,
        recipient_id=gift.recipient_id if patch.recipient_id is None else patch.recipient_id,
        status=gift.status,
    )
