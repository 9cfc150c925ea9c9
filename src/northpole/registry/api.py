"""HTTP routes of the gift registry: parse, call the service, serialise.

Gift ids travel as decimal strings; times as RFC 3339 UTC with milliseconds.
Operators (and admin) register and change gifts; workers may read them too.

=========================================  =======================================
``POST /api/v1/gifts``                     one gift, or ``{"gifts": [...]}`` (all or none)
``GET /api/v1/gifts/{id}``                 one gift (LRU cache in front)
``GET /api/v1/gifts?recipient_id=&status=  a page, oldest first; ``next_cursor`` continues
&since=&cursor=&limit=``
``PATCH /api/v1/gifts/{id}``               ``gift_type`` and/or ``recipient_id``
``GET /api/v1/gifts/stats``                gifts per status
=========================================  =======================================

A gift's ``status`` follows its tasks and cannot be set through the API.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr
from starlette.responses import Response

from northpole.core.app import json_response
from northpole.core.auth import Role, require_roles
from northpole.core.errors import InvalidInput
from northpole.core.validation import load_json, validate
from northpole.idgen import parse_id
from northpole.registry.model import (
    MAX_GIFT_TYPE,
    MAX_PAGE,
    MAX_RECIPIENT_ID,
    Cursor,
    Gift,
    GiftPatch,
    GiftQuery,
    GiftStatus,
    NewGift,
)

if TYPE_CHECKING:
    from northpole.registry.service import RegistryService

#: Hard limit of gifts in one request body (``registry.max_batch`` may be lower).
MAX_REQUEST_GIFTS = 100_000

GiftType = Annotated[StrictStr, Field(min_length=1, max_length=MAX_GIFT_TYPE)]
RecipientId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_RECIPIENT_ID)]


class GiftIn(BaseModel):
    """One gift to register."""

    model_config = ConfigDict(extra="forbid")

    gift_type: GiftType
    recipient_id: RecipientId

    def to_new(self) -> NewGift:
        """The service's view of this gift."""
        return NewGift(self.gift_type, self.recipient_id)


class GiftBatchIn(BaseModel):
    """Many gifts, registered all or none."""

    model_config = ConfigDict(extra="forbid")

    gifts: list[GiftIn] = Field(min_length=1, max_length=MAX_REQUEST_GIFTS)


class GiftPatchIn(BaseModel):
    """The fields an operator may change."""

    model_config = ConfigDict(extra="forbid")

    gift_type: GiftType | None = None
    recipient_id: RecipientId | None = None


@functools.lru_cache(maxsize=4_096)
def rfc3339_ms(ms: int) -> str:
    """Unix milliseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (a batch's gifts share a few ms)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def gift_json(gift: Gift) -> dict[str, Any]:
    """The wire form of a gift."""
    return {
        "id": str(gift.id),
        "workshop_id": gift.workshop_id,
        "created_at": rfc3339_ms(gift.created_ms),
        "gift_type": gift.gift_type,
        "recipient_id": gift.recipient_id,
        "status": gift.status.value,
    }


def _new_gifts(data: Any) -> tuple[list[NewGift], bool]:
    """The gifts of a create body, and whether it was a batch."""
    if isinstance(data, dict) and "gifts" in data:
        return [g.to_new() for g in validate(data, GiftBatchIn).gifts], True
    return [validate(data, GiftIn).to_new()], False


def _patch(data: Any) -> GiftPatch:
    if isinstance(data, dict) and "status" in data:
        raise InvalidInput("status follows the gift's tasks and cannot be set", field="status")
    body = validate(data, GiftPatchIn)
    return GiftPatch(gift_type=body.gift_type, recipient_id=body.recipient_id)


def _since_ms(since: datetime | None) -> int | None:
    return None if since is None else int(since.timestamp() * 1000)


GiftIdPath = Annotated[str, Path(alias="id", description="A Gift ID (decimal).")]


def build_router(service: RegistryService) -> APIRouter:
    """Return the gift registry's routes."""
    router = APIRouter(prefix="/api/v1", tags=["gifts"])
    writers = require_roles(Role.OPERATOR)
    readers = require_roles(Role.OPERATOR, Role.WORKER)

    @router.post("/gifts", status_code=201, dependencies=[writers], summary="Register gifts")
    async def create(request: Request) -> Response:
        new, batch = _new_gifts(load_json(await request.body()))
        gifts = await service.create(new)
        if batch:
            return json_response({"gifts": [gift_json(g) for g in gifts]}, 201)
        return json_response(gift_json(gifts[0]), 201)

    @router.get("/gifts/stats", dependencies=[readers], summary="Gifts per status")
    async def stats() -> Response:
        counts = await service.counts()
        return json_response({"by_status": {s.value: n for s, n in counts.items()}})

    @router.get("/gifts", dependencies=[readers], summary="List gifts (keyset pagination)")
    async def find(
        recipient_id: Annotated[
            str | None, Query(min_length=1, max_length=MAX_RECIPIENT_ID)
        ] = None,
        status: GiftStatus | None = None,
        since: AwareDatetime | None = None,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> Response:
        query = GiftQuery(
            recipient_id=recipient_id,
            status=status,
            since_ms=_since_ms(since),
            after=None if cursor is None else Cursor.decode(cursor),
            limit=limit,
        )
        page = await service.find(query)
        return json_response(
            {
                "gifts": [gift_json(g) for g in page.gifts],
                "next_cursor": None if page.next is None else page.next.encode(),
            }
        )

    @router.get("/gifts/{id}", dependencies=[readers], summary="Read a gift")
    async def get(gift_id: GiftIdPath) -> Response:
        return json_response(gift_json(await service.get(parse_id(gift_id))))

    @router.patch("/gifts/{id}", dependencies=[writers], summary="Change a gift's operator fields")
    async def patch(gift_id: GiftIdPath, request: Request) -> Response:
        gift_patch = _patch(load_json(await request.body()))
        return json_response(gift_json(await service.patch(parse_id(gift_id), gift_patch)))

    return router
