"""HTTP routes of the Gift ID service: parse, call the service, serialise.

IDs travel as decimal strings because JavaScript numbers lose precision above
2**53.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from northpole.core.app import json_response
from northpole.core.auth import Role, require_roles
from northpole.core.validation import parse_body
from northpole.idgen.snowflake import IDS_PER_MS, parse_id
from northpole.idgen.wire import ids_json

if TYPE_CHECKING:
    from northpole.idgen.service import IdGenService


class GenerateRequest(BaseModel):
    """Body of ``POST /api/v1/gift-id/generate``; the whole body is optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    count: int = Field(default=1, ge=1, le=IDS_PER_MS, description="How many IDs, 1-4096.")


class GenerateResponse(BaseModel):
    """New IDs in increasing order, as decimal strings."""

    ids: list[str]


class DecodeResponse(BaseModel):
    """The parts of an ID."""

    id: str
    timestamp: str = Field(description="RFC 3339 UTC with milliseconds.")
    unix_ms: int
    workshop_id: int
    sequence: int


class HealthResponse(BaseModel):
    """Status of this generator instance."""

    status: str
    workshop_id: int | None
    assigned_by: str | None
    epoch_ms: int
    clock_behind_ms: int


def rfc3339_ms(unix_ms: int) -> str:
    """Format Unix milliseconds as ``2025-01-01T00:00:00.000Z``."""
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def build_router(service: IdGenService) -> APIRouter:
    """Return the routes of ``service`` under ``/api/v1/gift-id``."""
    router = APIRouter(prefix="/api/v1/gift-id", tags=["gift-id"])
    generate_roles = require_roles(Role.OPERATOR, Role.WORKER)
    any_token = require_roles()

    @router.post(
        "/generate",
        response_model=GenerateResponse,
        dependencies=[generate_roles],
        summary="Issue new Gift IDs",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            }
        },
    )
    async def generate(request: Request) -> Response:
        raw = await request.body()
        count = parse_body(raw, GenerateRequest).count if raw.strip() else 1
        return Response(ids_json(service.generate(count)), media_type="application/json")

    @router.get(
        "/{id}/decode",
        response_model=DecodeResponse,
        dependencies=[any_token],
        summary="Decode a Gift ID",
    )
    async def decode_id(
        gift_id: Annotated[str, Path(alias="id", description="A Gift ID, decimal.")],
    ) -> Response:
        parts = service.decode(parse_id(gift_id))
        return json_response(
            {
                "id": str(parts.id),
                "timestamp": rfc3339_ms(parts.unix_ms),
                "unix_ms": parts.unix_ms,
                "workshop_id": parts.workshop_id,
                "sequence": parts.sequence,
            }
        )

    @router.get(
        "/health",
        response_model=HealthResponse,
        dependencies=[any_token],
        summary="Generator health",
    )
    async def health() -> Response:
        report = service.health()
        body = {
            "status": report.status,
            "workshop_id": report.workshop_id,
            "assigned_by": report.assigned_by,
            "epoch_ms": report.epoch_ms,
            "clock_behind_ms": report.clock_behind_ms,
        }
        return json_response(body, 200 if report.status == "ok" else 503)

    return router
