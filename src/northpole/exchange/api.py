"""HTTP routes of the exchange service: parse, call the service, serialise.

Exchange ids travel as decimal strings, times as RFC 3339 UTC with
milliseconds. Organizer actions need an operator (the exchange's own) or
admin token; participant actions need the participant's own token (role
``participant``, ``sub`` = their id). Nobody, the organizer included, is
ever sent who gives to whom: a participant fetches their own sealed match.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.responses import Response

from northpole.core.app import json_response
from northpole.core.auth import Principal, Role, require_roles
from northpole.core.errors import InvalidInput
from northpole.core.validation import load_json, parse_body, validate
from northpole.exchange import keys
from northpole.exchange.crypto import PAYLOAD_VERSION
from northpole.exchange.keys import ExchangeRecord, participant_json, rules_json
from northpole.exchange.model import Participant, RegionPreference, Rules
from northpole.exchange.policy import NewExchange

if TYPE_CHECKING:
    from northpole.exchange.service import ExchangeService

#: Hard cap on one request's participants; the configured ``max_batch`` is checked after.
MAX_REQUEST_PARTICIPANTS = 100_000
MAX_REFERENCES = 10_000
SEALED_FORMAT = f"nacl-sealedbox-x25519/json-v{PAYLOAD_VERSION}"

Budget = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]


class RulesIn(BaseModel):
    """An exchange's rules (see ``docs/matching.md``)."""

    model_config = ConfigDict(extra="forbid")

    budget_tolerance: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)] | None = None
    no_reciprocal: StrictBool = False
    single_cycle: StrictBool = False
    cross_region_only: StrictBool = False
    allow_cross_region: StrictBool = False
    region_preference: RegionPreference = RegionPreference.NONE

    def to_rules(self, default_tolerance: float | None) -> Rules:
        """Return the model's rules; ``default_tolerance`` if ``budget_tolerance`` was left out."""
        values = self.model_dump()
        if "budget_tolerance" not in self.model_fields_set:
            values["budget_tolerance"] = default_tolerance
        return Rules(**values)


class ExchangeIn(BaseModel):
    """A new exchange."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=200)
    year: StrictInt = Field(ge=2000, le=9999)
    region: StrictStr = Field(min_length=1, max_length=100)
    rules: RulesIn | None = None


class ParticipantIn(BaseModel):
    """One participant to register."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr = Field(min_length=1, max_length=100)
    region: StrictStr = Field(min_length=1, max_length=100)
    budget: Budget
    exclusions: list[StrictStr] = Field(default_factory=list, max_length=MAX_REFERENCES)
    preferences: list[StrictStr] = Field(default_factory=list, max_length=MAX_REFERENCES)
    group: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    public_key: StrictStr = Field(min_length=1, max_length=100)

    def to_participant(self) -> Participant:
        """Return the service's view of this participant."""
        return Participant(
            id=self.id,
            region=self.region,
            budget=self.budget,
            exclusions=frozenset(self.exclusions),
            preferences=tuple(self.preferences),
            group=self.group,
            public_key=self.public_key,
        )


class ParticipantsIn(BaseModel):
    """Many participants, registered all or none."""

    model_config = ConfigDict(extra="forbid")

    participants: list[ParticipantIn] = Field(min_length=1, max_length=MAX_REQUEST_PARTICIPANTS)


class ParticipantPatch(BaseModel):
    """Changes to a participant; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    region: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    budget: Budget | None = None
    exclusions: list[StrictStr] | None = Field(default=None, max_length=MAX_REFERENCES)
    preferences: list[StrictStr] | None = Field(default=None, max_length=MAX_REFERENCES)
    group: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    public_key: StrictStr | None = Field(default=None, min_length=1, max_length=100)

    def changes(self) -> dict[str, Any]:
        """Return the fields the request set, as :class:`Participant` values.

        Raises:
            InvalidInput: A field other than ``group`` set to null, or nothing to change.
        """
        changes: dict[str, Any] = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if value is None and name != "group":
                raise InvalidInput(f"{name} cannot be null", field=name)
            if name == "exclusions":
                value = frozenset(value)
            elif name == "preferences":
                value = tuple(value)
            changes[name] = value
        if not changes:
            raise InvalidInput("the patch changes nothing", field="body")
        return changes


def rfc3339_ms(ms: int | None) -> str | None:
    """Return Unix ms as RFC 3339 UTC with milliseconds."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def exchange_json(record: ExchangeRecord) -> dict[str, Any]:
    """Return the wire form of an exchange: its settings, phase and counts (never pairs)."""
    ex = record.exchange
    return {
        "id": ex.id,
        "name": ex.name,
        "year": ex.year,
        "region": ex.region,
        "organizer": ex.organizer,
        "rules": rules_json(ex.rules),
        "phase": ex.phase.value,
        "participants": record.participants,
        "matches": record.matches,
        "created_at": rfc3339_ms(ex.created_ms),
        "updated_at": rfc3339_ms(record.updated_ms),
        "matching_since": rfc3339_ms(record.matching_since_ms),
        "cost": record.cost,
        "optimal": record.optimal,
        "commitment_root": record.commitment_root,
    }


def _pid(text: str) -> str:
    if not keys.ID_PATTERN.match(text):
        raise InvalidInput(
            "participant_id must be 1-100 letters, digits or . _ @ : + -", field="participant_id"
        )
    return text


ExchangeIdPath = Annotated[str, Path(alias="id", description="An exchange id (decimal).")]
ParticipantIdPath = Annotated[str, Path(alias="pid", description="A participant id.")]
#: The exchange's organizer (checked by the service) or an admin.
Organizer = Annotated[Principal, require_roles(Role.OPERATOR)]
#: A participant acting for themselves (the service checks ``sub``).
Participant_ = Annotated[Principal, require_roles(Role.PARTICIPANT)]
#: Either of the above.
Anyone = Annotated[Principal, require_roles(Role.OPERATOR, Role.PARTICIPANT)]


def build_router(service: ExchangeService) -> APIRouter:  # noqa: C901 - one closure per route
    """Return the exchange service's routes."""
    router = APIRouter(prefix="/api/v1", tags=["exchange"])
    default_tolerance = service.settings.default_budget_tolerance

    @router.post("/exchanges", status_code=201, summary="Create an exchange")
    async def create(request: Request, principal: Organizer) -> Response:
        body = parse_body(await request.body(), ExchangeIn)
        new = NewExchange(
            name=body.name,
            year=body.year,
            region=body.region,
            rules=None if body.rules is None else body.rules.to_rules(default_tolerance),
        )
        return json_response(exchange_json(await service.create(new, principal)), 201)

    @router.get("/exchanges/{id}", summary="Read an exchange (phase and counts)")
    async def read(exchange_id: ExchangeIdPath, principal: Anyone) -> Response:
        return json_response(exchange_json(await service.get(exchange_id, principal)))

    @router.post("/exchanges/{id}/cancel", summary="Cancel an exchange")
    async def cancel(exchange_id: ExchangeIdPath, principal: Organizer) -> Response:
        return json_response(exchange_json(await service.cancel(exchange_id, principal)))

    @router.post("/exchanges/{id}/participants", status_code=201, summary="Register")
    async def register(
        exchange_id: ExchangeIdPath, request: Request, principal: Anyone
    ) -> Response:
        data = load_json(await request.body())
        if isinstance(data, dict) and "participants" in data:
            many = validate(data, ParticipantsIn)
            people = [p.to_participant() for p in many.participants]
            stored = await service.register(exchange_id, people, principal, batch=True)
            return json_response(
                {"participants": [participant_json(p) for p in stored], "count": len(stored)}, 201
            )
        one = validate(data, ParticipantIn).to_participant()
        stored = await service.register(exchange_id, [one], principal)
        return json_response(participant_json(stored[0]), 201)

    @router.get("/exchanges/{id}/participants/{pid}", summary="Read one's own registration")
    async def participant(
        exchange_id: ExchangeIdPath, pid: ParticipantIdPath, principal: Participant_
    ) -> Response:
        found = await service.participant(exchange_id, _pid(pid), principal)
        return json_response(participant_json(found))

    @router.patch("/exchanges/{id}/participants/{pid}", summary="Change a registration")
    async def update(
        exchange_id: ExchangeIdPath, pid: ParticipantIdPath, request: Request, principal: Anyone
    ) -> Response:
        changes = parse_body(await request.body(), ParticipantPatch).changes()
        updated = await service.update_participant(exchange_id, _pid(pid), changes, principal)
        return json_response(participant_json(updated))

    @router.delete(
        "/exchanges/{id}/participants/{pid}", status_code=204, summary="Withdraw a registration"
    )
    async def remove(
        exchange_id: ExchangeIdPath, pid: ParticipantIdPath, principal: Anyone
    ) -> Response:
        await service.remove_participant(exchange_id, _pid(pid), principal)
        return Response(status_code=204)

    @router.post("/exchanges/{id}/match", summary="Match and commit (sealed)")
    async def match(exchange_id: ExchangeIdPath, principal: Organizer) -> Response:
        # An infeasible exchange's explanation travels as error.details.
        record = await service.match(exchange_id, principal)
        return json_response(exchange_json(record))

    @router.get("/exchanges/{id}/matches/{pid}", summary="Read one's own sealed match")
    async def sealed_match(
        exchange_id: ExchangeIdPath, pid: ParticipantIdPath, principal: Participant_
    ) -> Response:
        record, sealed = await service.sealed_match(exchange_id, _pid(pid), principal)
        return json_response(
            {
                "exchange_id": record.exchange.id,
                "participant_id": sealed.giver,
                "format": SEALED_FORMAT,
                "sealed": sealed.sealed,
                "commitment": sealed.commitment,
                "commitment_root": record.commitment_root,
            }
        )

    @router.get("/exchanges/{id}/commitments", summary="Every giver's commitment, for audit")
    async def commitments(exchange_id: ExchangeIdPath, principal: Anyone) -> Response:
        record, by_giver = await service.commitments(exchange_id, principal)
        return json_response(
            {
                "exchange_id": record.exchange.id,
                "commitment_root": record.commitment_root,
                "commitments": [{"giver": g, "commitment": c} for g, c in sorted(by_giver.items())],
            }
        )

    return router
