"""The exchange service's storage schema: every key, every value, every subject, in one place.

The design's etcd layout is ``/exchanges/{year}/participants/{id}``,
``/exchanges/{year}/matches/{id}`` and ``/exchanges/{year}/state``, one exchange
a year. There are many exchanges a year here, so the exchange id joins the
path after the year, and an index finds an exchange's year from its id::

    /exchanges/{year}/{exchange_id}/state                the exchange record (phase)
    /exchanges/{year}/{exchange_id}/participants/{pid}   one participant record
    /exchanges/{year}/{exchange_id}/matches/{pid}        the sealed match of giver pid
    /exchange-index/{exchange_id}                        {"year": ..., "phase": ...}

(the design's ``/exchanges/{year}/state``, ``.../participants/{id}`` and
``.../matches/{id}`` with ``{exchange_id}/`` inserted after the year).

``exchange_id`` is a Gift ID in decimal; ``pid`` matches :data:`ID_PATTERN`
(no ``/``), so a prefix such as ``.../participants/`` never reaches into
another exchange's keys.

**Values** are UTF-8 JSON objects (orjson), one per key:

* state: ``{"id", "name", "year", "region", "organizer", "rules": {...},
  "phase", "created_ms", "updated_ms", "participants", "matches",
  "matching_since_ms", "cost", "optimal", "commitment_root"}``. Every change
  of phase or participant count rewrites it, so its ``mod_revision`` is the
  fence every other write of the exchange compares against.
* participant: ``{"id", "region", "budget", "exclusions": [...],
  "preferences": [...], "group", "public_key"}``.
* match: ``{"giver", "sealed", "commitment"}`` (see :mod:`northpole.exchange.crypto`);
  the plaintext receiver is never stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import orjson

from northpole.core.errors import Unavailable
from northpole.exchange.crypto import SealedMatch
from northpole.exchange.model import Exchange, Participant, Phase, RegionPreference, Rules

#: Participant ids, regions and groups: 1-100 of letters, digits and ``. _ @ : + -``.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._@:+-]{1,100}$")
#: Exchange ids: decimal Gift IDs.
EXCHANGE_ID_PATTERN = re.compile(r"^[0-9]{1,20}$")

ROOT = "/exchanges/"
INDEX_ROOT = "/exchange-index/"

#: Bus subject of a committed exchange; the event is ``service.ExchangeCommitted``.
EXCHANGE_COMMITTED = "exchange.committed"


def exchange_prefix(year: int, exchange_id: str) -> str:
    """Every key of one exchange starts with this."""
    return f"{ROOT}{year}/{exchange_id}/"


def state_key(year: int, exchange_id: str) -> str:
    """The exchange record (the design's ``/exchanges/{year}/state``)."""
    return f"{exchange_prefix(year, exchange_id)}state"


def participants_prefix(year: int, exchange_id: str) -> str:
    """Prefix of the exchange's participant records."""
    return f"{exchange_prefix(year, exchange_id)}participants/"


def participant_key(year: int, exchange_id: str, pid: str) -> str:
    """One participant's record."""
    return participants_prefix(year, exchange_id) + pid


def matches_prefix(year: int, exchange_id: str) -> str:
    """Prefix of the exchange's sealed matches."""
    return f"{exchange_prefix(year, exchange_id)}matches/"


def match_key(year: int, exchange_id: str, giver: str) -> str:
    """The sealed match of one giver."""
    return matches_prefix(year, exchange_id) + giver


def index_key(exchange_id: str) -> str:
    """Where an exchange's year (and phase) is found from its id alone."""
    return INDEX_ROOT + exchange_id


def last_segment(key: str) -> str:
    """The id at the end of a participant or match key."""
    return key.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    """The state value: an exchange, its counts, and what its commit recorded.

    Attributes:
        exchange: The exchange itself (phase included).
        participants: How many participants are registered.
        matches: How many sealed matches were committed.
        updated_ms: When the record last changed.
        matching_since_ms: When the running (or abandoned) solve began; MATCHING only.
        cost: The committed matching's total cost.
        optimal: Whether that cost is proven minimal.
        commitment_root: :func:`northpole.exchange.crypto.commitment_root` of the matches.
    """

    exchange: Exchange
    participants: int = 0
    matches: int = 0
    updated_ms: int = 0
    matching_since_ms: int | None = None
    cost: float | None = None
    optimal: bool | None = None
    commitment_root: str | None = None

    @property
    def phase(self) -> Phase:
        """The exchange's phase."""
        return self.exchange.phase

    def with_phase(self, phase: Phase, *, now_ms: int, **changes: Any) -> ExchangeRecord:
        """Return a copy in ``phase``, stamped ``now_ms``, with other fields changed."""
        return replace(
            self, exchange=replace(self.exchange, phase=phase), updated_ms=now_ms, **changes
        )


class CorruptValue(Unavailable):
    """A stored value that does not decode: the store was written by something else."""

    code = "corrupt_value"


def rules_json(rules: Rules) -> dict[str, Any]:
    """Return the JSON form of rules (also the API's)."""
    return {
        "budget_tolerance": rules.budget_tolerance,
        "no_reciprocal": rules.no_reciprocal,
        "single_cycle": rules.single_cycle,
        "cross_region_only": rules.cross_region_only,
        "allow_cross_region": rules.allow_cross_region,
        "region_preference": rules.region_preference.value,
    }


def rules_from_json(data: dict[str, Any]) -> Rules:
    """Return rules from their JSON form."""
    tolerance = data.get("budget_tolerance")
    return Rules(
        budget_tolerance=None if tolerance is None else float(tolerance),
        no_reciprocal=bool(data.get("no_reciprocal", False)),
        single_cycle=bool(data.get("single_cycle", False)),
        cross_region_only=bool(data.get("cross_region_only", False)),
        allow_cross_region=bool(data.get("allow_cross_region", False)),
        region_preference=RegionPreference(data.get("region_preference", "none")),
    )


def decode_object(key: str, value: bytes) -> dict[str, Any]:
    """Return the JSON object stored under ``key``; raise CorruptValue if it is not one."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise CorruptValue(f"stored value of {key} is not JSON") from exc
    if not isinstance(data, dict):
        raise CorruptValue(f"stored value of {key} is not a JSON object")
    return data


def encode_state(record: ExchangeRecord) -> bytes:
    """Return the state value of ``record``."""
    ex = record.exchange
    return orjson.dumps(
        {
            "id": ex.id,
            "name": ex.name,
            "year": ex.year,
            "region": ex.region,
            "organizer": ex.organizer,
            "rules": rules_json(ex.rules),
            "phase": ex.phase.value,
            "created_ms": ex.created_ms,
            "updated_ms": record.updated_ms,
            "participants": record.participants,
            "matches": record.matches,
            "matching_since_ms": record.matching_since_ms,
            "cost": record.cost,
            "optimal": record.optimal,
            "commitment_root": record.commitment_root,
        }
    )


def decode_state(key: str, value: bytes) -> ExchangeRecord:
    """Return the record in a state value.

    Raises:
        CorruptValue: The value is not a state record.
    """
    data = decode_object(key, value)
    try:
        exchange = Exchange(
            id=str(data["id"]),
            name=str(data["name"]),
            year=int(data["year"]),
            region=str(data["region"]),
            organizer=str(data["organizer"]),
            rules=rules_from_json(data["rules"]),
            phase=Phase(data["phase"]),
            created_ms=int(data["created_ms"]),
        )
        return ExchangeRecord(
            exchange=exchange,
            participants=int(data["participants"]),
            matches=int(data["matches"]),
            updated_ms=int(data["updated_ms"]),
            matching_since_ms=data.get("matching_since_ms"),
            cost=data.get("cost"),
            optimal=data.get("optimal"),
            commitment_root=data.get("commitment_root"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptValue(f"stored value of {key} is not an exchange record") from exc


def encode_index(record: ExchangeRecord) -> bytes:
    """Return the index value of ``record``."""
    return orjson.dumps({"year": record.exchange.year, "phase": record.phase.value})


def decode_index(key: str, value: bytes) -> tuple[int, Phase]:
    """Return the year and phase in an index value."""
    data = decode_object(key, value)
    try:
        return int(data["year"]), Phase(data["phase"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptValue(f"stored value of {key} is not an index entry") from exc


def encode_participant(participant: Participant) -> bytes:
    """Return the stored value of a participant."""
    return orjson.dumps(participant_json(participant))


def participant_json(participant: Participant) -> dict[str, Any]:
    """Return the JSON form of a participant (also the API's)."""
    return {
        "id": participant.id,
        "region": participant.region,
        "budget": participant.budget,
        "exclusions": sorted(participant.exclusions),
        "preferences": list(participant.preferences),
        "group": participant.group,
        "public_key": participant.public_key,
    }


def decode_participant(key: str, value: bytes) -> Participant:
    """Return the participant in a stored value."""
    data = decode_object(key, value)
    try:
        group = data.get("group")
        return Participant(
            id=str(data["id"]),
            region=str(data["region"]),
            budget=float(data["budget"]),
            exclusions=frozenset(str(x) for x in data.get("exclusions", ())),
            preferences=tuple(str(x) for x in data.get("preferences", ())),
            group=None if group is None else str(group),
            public_key=str(data["public_key"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptValue(f"stored value of {key} is not a participant") from exc


def encode_match(match: SealedMatch) -> bytes:
    """Return the stored value of a sealed match."""
    return orjson.dumps(
        {"giver": match.giver, "sealed": match.sealed, "commitment": match.commitment}
    )


def decode_match(key: str, value: bytes) -> SealedMatch:
    """Return the sealed match in a stored value."""
    data = decode_object(key, value)
    try:
        return SealedMatch(
            giver=str(data["giver"]),
            sealed=str(data["sealed"]),
            commitment=str(data["commitment"]),
        )
    except (KeyError, TypeError) as exc:
        raise CorruptValue(f"stored value of {key} is not a sealed match") from exc
