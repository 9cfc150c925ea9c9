"""The exchange service's rules, as pure functions: who may do what, in which phase, with what.

Nothing here does I/O. The service reads the store, then asks these
functions; each raises the error the API answers with.

Who may do what:

* **organizer**: the operator whose token created the exchange, or an admin.
  Registers anyone, changes and withdraws anyone, matches, cancels.
* **participant**: a ``participant`` token whose ``sub`` is their id.
  Registers, changes, withdraws and reads only themselves; reads their own
  sealed match (nobody else may, the organizer included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from northpole.core.auth import Principal, Role
from northpole.core.errors import Conflict, Forbidden, InvalidInput, NorthpoleError, NotFound
from northpole.exchange import keys
from northpole.exchange.crypto import parse_public_key
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.model import Exchange, Matching, Participant, Phase, Rules

MIN_YEAR = 2000
MAX_YEAR = 9999
MAX_NAME = 200
_ALPHABET = "1-100 letters, digits or . _ @ : + -"

#: Names the field of an error: ``field(name)`` -> ``"budget"`` or ``"participants.3.budget"``.
FieldNamer = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class NewExchange:
    """What an organizer gives to create an exchange."""

    name: str
    year: int
    region: str
    rules: Rules | None = None


class ExchangeNotFound(NotFound):
    """No exchange has that id."""

    code = "exchange_not_found"

    def __init__(self, exchange_id: str) -> None:
        super().__init__(f"no exchange with id {exchange_id}", field="id")


class ParticipantNotFound(NotFound):
    """The exchange has no participant with that id."""

    code = "participant_not_found"

    def __init__(self, pid: str) -> None:
        super().__init__(f"no participant {pid!r} in this exchange", field="participant_id")


class WrongPhase(Conflict):
    """The exchange is not in a phase that allows this (409; ``details.phase`` says which)."""

    code = "wrong_phase"

    def __init__(self, record: ExchangeRecord, action: str, allowed: Sequence[Phase]) -> None:
        names = " or ".join(p.value for p in allowed)
        super().__init__(
            f"cannot {action}: the exchange is {record.phase.value} (needs {names})",
            field="phase",
            details={"phase": record.phase.value},
        )


def require(record: ExchangeRecord, action: str, *allowed: Phase) -> None:
    """Raise :class:`WrongPhase` unless the exchange is in one of ``allowed``."""
    if record.phase not in allowed:
        raise WrongPhase(record, action, allowed)


# -- who -------------------------------------------------------------------------


def organizes(principal: Principal, exchange: Exchange) -> bool:
    """Whether ``principal`` may run ``exchange``: an admin, or the operator who created it."""
    if principal.role is Role.ADMIN:
        return True
    return principal.role is Role.OPERATOR and principal.sub == exchange.organizer


def is_participant(principal: Principal, pid: str) -> bool:
    """Whether ``principal`` is participant ``pid`` in person."""
    return principal.role is Role.PARTICIPANT and principal.sub == pid


def authorize_create(principal: Principal) -> None:
    """Only operators and admins create exchanges."""
    if principal.role not in (Role.OPERATOR, Role.ADMIN):
        raise Forbidden("only an operator or admin may create an exchange")


def authorize_organizer(record: ExchangeRecord, principal: Principal) -> None:
    """Only the organizer (or an admin) matches and cancels."""
    if not organizes(principal, record.exchange):
        raise Forbidden("only the exchange's organizer (or an admin) may do this")


def authorize_for(record: ExchangeRecord, principal: Principal, pid: str) -> None:
    """The organizer, or participant ``pid`` themselves."""
    if not (organizes(principal, record.exchange) or is_participant(principal, pid)):
        raise Forbidden("only the participant themselves or the organizer may do this")


def authorize_register(
    record: ExchangeRecord, principal: Principal, participants: Sequence[Participant]
) -> None:
    """The organizer registers anyone; a participant registers themselves, alone."""
    if organizes(principal, record.exchange):
        return
    if len(participants) == 1 and is_participant(principal, participants[0].id):
        return
    raise Forbidden(
        "participants register themselves (token subject = their id); "
        "the organizer may register anyone"
    )


def authorize_read(record: ExchangeRecord, principal: Principal, *, registered: bool) -> None:
    """The organizer, or a participant ``registered`` in the exchange."""
    if organizes(principal, record.exchange):
        return
    if principal.role is Role.PARTICIPANT and registered:
        return
    raise Forbidden("only the organizer and the exchange's participants may read it")


def authorize_own(principal: Principal, pid: str, what: str) -> None:
    """Participant ``pid`` alone (not the organizer, not an admin)."""
    if not is_participant(principal, pid):
        raise Forbidden(f"only the participant may read their {what}")


# -- what -------------------------------------------------------------------------


def field_name(batch: bool, index: int, name: str) -> str:
    """Name a participant field in errors: ``participants.<i>.<name>`` in a batch."""
    return f"participants.{index}.{name}" if batch else name


def check_new_exchange(new: NewExchange, *, default_tolerance: float | None) -> Rules:
    """Check a new exchange; return its rules (``default_tolerance`` if none were given).

    Raises:
        InvalidInput: A bad name, year, region or budget tolerance.
    """
    if not 1 <= len(new.name.strip()) <= MAX_NAME:
        raise InvalidInput(f"name must be 1-{MAX_NAME} characters", field="name")
    if not MIN_YEAR <= new.year <= MAX_YEAR:
        raise InvalidInput(f"year must be {MIN_YEAR}-{MAX_YEAR}", field="year")
    if not keys.ID_PATTERN.match(new.region):
        raise InvalidInput(f"region must be {_ALPHABET}", field="region")
    rules = new.rules or Rules(budget_tolerance=default_tolerance)
    tolerance = rules.budget_tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidInput(
            "budget_tolerance must be a non-negative number", field="rules.budget_tolerance"
        )
    return rules


def check_participant(participant: Participant, *, field: FieldNamer) -> None:
    """Check one participant's own fields (not whether the people they name exist).

    Raises:
        InvalidInput: A malformed id, region, group, budget, reference or key.
    """
    for name, value in (("id", participant.id), ("region", participant.region)):
        if not keys.ID_PATTERN.match(value):
            raise InvalidInput(f"{name} must be {_ALPHABET}", field=field(name))
    if participant.group is not None and not keys.ID_PATTERN.match(participant.group):
        raise InvalidInput(f"group must be {_ALPHABET}", field=field("group"))
    if not (math.isfinite(participant.budget) and participant.budget > 0):
        raise InvalidInput("budget must be a positive number", field=field("budget"))
    for name, ids in (
        ("exclusions", participant.exclusions),
        ("preferences", participant.preferences),
    ):
        for other in ids:
            if not keys.ID_PATTERN.match(other):
                raise InvalidInput(f"{name} holds a malformed id {other!r}", field=field(name))
    if len(set(participant.preferences)) != len(participant.preferences):
        raise InvalidInput("preferences name someone twice", field=field("preferences"))
    if participant.id in participant.preferences:
        raise InvalidInput(
            "a participant cannot prefer giving to themselves", field=field("preferences")
        )
    parse_public_key(participant.public_key, field=field("public_key"))


def references(participant: Participant) -> set[str]:
    """The other people a participant's exclusions and preferences name."""
    return (set(participant.exclusions) | set(participant.preferences)) - {participant.id}


def check_references(
    participant: Participant, known: Callable[[str], bool], *, field: FieldNamer
) -> None:
    """Refuse exclusions or preferences that name someone not in the exchange.

    Raises:
        InvalidInput: On ``exclusions`` or ``preferences``, naming the unknown id.
    """
    for name, ids in (
        ("exclusions", sorted(participant.exclusions)),
        ("preferences", participant.preferences),
    ):
        for other in ids:
            if other != participant.id and not known(other):
                raise InvalidInput(
                    f"{name} names {other!r}, who is not a participant of this exchange",
                    field=field(name),
                )


def without(participant: Participant, pid: str) -> Participant:
    """``participant`` with ``pid`` dropped from their exclusions and preferences."""
    return Participant(
        id=participant.id,
        region=participant.region,
        budget=participant.budget,
        exclusions=participant.exclusions - {pid},
        preferences=tuple(x for x in participant.preferences if x != pid),
        group=participant.group,
        public_key=participant.public_key,
    )


def check_pairs(matching: Matching, participants: Sequence[Participant]) -> None:
    """Refuse a matching that is not a permutation of the participants (a matcher bug: 500)."""
    ids = {p.id for p in participants}
    pairs = matching.pairs
    if set(pairs) != ids or set(pairs.values()) != ids or len(pairs) != len(ids):
        raise NorthpoleError("the matcher returned a matching that does not cover everybody once")
