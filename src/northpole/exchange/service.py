"""The exchange service: lifecycle, registration, the solve, sealed commit, reads.

Lifecycle of an exchange::

    REGISTRATION --match--> MATCHING --commit--> COMMITTED
         ^                      |
         └--infeasible/error----┘
    REGISTRATION or MATCHING --cancel--> CANCELLED

Every write is an optimistic transaction on the etcd-shaped store
(:mod:`northpole.exchange.store`): it compares the ``mod_revision`` of the
exchange's state key (and of the participant keys it read) and retries on
contention. Entering MATCHING rewrites the state key, so no registration
can land after the solve has read the participants; the commit puts every
sealed match and the COMMITTED state in one transaction conditioned on the
state key still being the MATCHING one, so nobody sees part of a matching.

Privacy: the plaintext matching exists only in the memory of the solving
thread; it is sealed per giver (:mod:`northpole.exchange.crypto`) before it
leaves :meth:`ExchangeService._solve`, and is never logged, stored or
returned.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from northpole.bus.port import EventBus
from northpole.core.app import Readiness
from northpole.core.auth import Principal, Role
from northpole.core.clock import Clock
from northpole.core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NorthpoleError,
    NotFound,
    Unavailable,
)
from northpole.core.logging import get_logger
from northpole.exchange import keys
from northpole.exchange.crypto import (
    SealedMatch,
    commitment_root,
    parse_public_key,
    seal_match,
)
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.metrics import ExchangeMetrics, Outcome
from northpole.exchange.model import (
    Exchange,
    Infeasible,
    Matching,
    Participant,
    Phase,
    Rules,
)
from northpole.exchange.settings import ExchangeSettings
from northpole.exchange.store import (
    Compare,
    Delete,
    ExchangeStore,
    KeyValue,
    Operation,
    Put,
    TxnResult,
)

_log = get_logger(__name__)
_T = TypeVar("_T")

#: Returns ``n`` fresh, unique ids (Gift IDs).
IdSource = Callable[[int], list[int]]
#: Opens the exchange store; called once at start-up.
StoreOpener = Callable[[], Awaitable[ExchangeStore]]
#: Solves one exchange (runs in a worker thread).
Matcher = Callable[[Sequence[Participant], Rules], Matching]

#: The embedded edition's exchange store, in the data directory.
EXCHANGE_DB = "exchange.db"
MIN_YEAR = 2000
MAX_YEAR = 9999
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class ExchangeCommitted:
    """Published on ``exchange.committed``: which exchange, and how many matches (no pairs)."""

    exchange_id: str
    year: int
    count: int


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
    """The exchange is not in a phase that allows this."""

    code = "wrong_phase"

    def __init__(self, record: ExchangeRecord, action: str, allowed: Sequence[Phase]) -> None:
        names = " or ".join(p.value for p in allowed)
        super().__init__(
            f"cannot {action}: the exchange is {record.phase.value} (needs {names})",
            field="phase",
            details={"phase": record.phase.value},
        )


def default_matcher(participants: Sequence[Participant], rules: Rules) -> Matching:
    """Solve with :func:`northpole.exchange.matching.match` (random among equally good answers)."""
    from northpole.exchange.matching import match

    return match(participants, rules)


def organizes(principal: Principal, exchange: Exchange) -> bool:
    """Whether ``principal`` may run ``exchange``: an admin, or the operator who created it."""
    if principal.role is Role.ADMIN:
        return True
    return principal.role is Role.OPERATOR and principal.sub == exchange.organizer


def is_participant(principal: Principal, pid: str) -> bool:
    """Whether ``principal`` is participant ``pid`` in person."""
    return principal.role is Role.PARTICIPANT and principal.sub == pid


def _field(batch: bool, index: int, name: str) -> str:
    return f"participants.{index}.{name}" if batch else name


def check_participant(participant: Participant, *, field: Callable[[str], str]) -> None:
    """Check one participant's own fields (not its references to others).

    Raises:
        InvalidInput: A malformed id, region, group, budget, reference or key.
    """
    for name, value in (("id", participant.id), ("region", participant.region)):
        if not keys.ID_PATTERN.match(value):
            raise InvalidInput(
                f"{name} must be 1-100 letters, digits or . _ @ : + -", field=field(name)
            )
    if participant.group is not None and not keys.ID_PATTERN.match(participant.group):
        raise InvalidInput(
            "group must be 1-100 letters, digits or . _ @ : + -", field=field("group")
        )
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


def _references(participant: Participant) -> set[str]:
    return (set(participant.exclusions) | set(participant.preferences)) - {participant.id}


def _unknown_reference(
    participant: Participant, known: Callable[[str], bool], field: Callable[[str], str]
) -> InvalidInput | None:
    for name, ids in (
        ("exclusions", sorted(participant.exclusions)),
        ("preferences", participant.preferences),
    ):
        for other in ids:
            if other != participant.id and not known(other):
                return InvalidInput(
                    f"{name} names {other!r}, who is not a participant of this exchange",
                    field=field(name),
                )
    return None


def _check_pairs(matching: Matching, participants: Sequence[Participant]) -> None:
    """Refuse a matching that is not a permutation of the participants."""
    ids = {p.id for p in participants}
    pairs = matching.pairs
    if set(pairs) != ids or set(pairs.values()) != ids or len(pairs) != len(ids):
        raise NorthpoleError("the matcher returned a matching that does not cover everybody once")


class ExchangeService:
    """The exchange part.

    Args:
        settings: The ``exchange`` settings group.
        open_store: Opens the store at start-up (closed at shutdown).
        registry: Where server-side metrics go.
        clock: The clock.
        bus: Where ``exchange.committed`` is published.
        ids: Where exchange ids come from; without it no exchange can be created.
        matcher: Solves an exchange (default :func:`default_matcher`); runs in a thread.
    """

    name = "exchange"

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        open_store: StoreOpener,
        registry: CollectorRegistry,
        clock: Clock,
        bus: EventBus,
        ids: IdSource | None = None,
        matcher: Matcher | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.bus = bus
        self.metrics = ExchangeMetrics.register(registry)
        self._open_store = open_store
        self._ids = ids
        self._matcher = matcher or default_matcher
        self._store: ExchangeStore | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._rng = random.SystemRandom()

    # -- lifecycle ----------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the store while the app runs."""
        self._store = await self._open_store()
        try:
            await self._refresh_phases()
            yield
        finally:
            store, self._store = self._store, None
            await store.close()

    def router(self) -> APIRouter:
        """Return the HTTP routes of this part."""
        from northpole.exchange.api import build_router

        return build_router(self)

    def readiness(self) -> Readiness:
        """Ready while the store is open."""
        return Readiness(True) if self._store is not None else Readiness(False, "store closed")

    @property
    def store(self) -> ExchangeStore:
        """The open store; raises Unavailable outside the lifespan."""
        if self._store is None:
            raise Unavailable("the exchange service is not running")
        return self._store

    # -- exchanges ----------------------------------------------------------------

    async def create(self, new: NewExchange, principal: Principal) -> ExchangeRecord:
        """Create an exchange in REGISTRATION, organized by ``principal``.

        Raises:
            Forbidden: Not an operator or admin.
            InvalidInput: A bad name, year, region or rule.
        """
        if principal.role not in (Role.OPERATOR, Role.ADMIN):
            raise Forbidden("only an operator or admin may create an exchange")
        rules = self._check_new(new)
        if self._ids is None:
            raise Unavailable("this process cannot issue exchange ids")
        now = self.clock.now_ms()
        exchange = Exchange(
            id=str(self._ids(1)[0]),
            name=new.name,
            year=new.year,
            region=new.region,
            organizer=principal.sub,
            rules=rules,
            phase=Phase.REGISTRATION,
            created_ms=now,
        )
        record = ExchangeRecord(exchange=exchange, updated_ms=now)
        state = keys.state_key(exchange.year, exchange.id)
        result = await self.store.txn(
            [Compare(keys.index_key(exchange.id), 0), Compare(state, 0)],
            [Put(state, keys.encode_state(record)), self._index(record)],
        )
        if not result.succeeded:
            raise Conflict(f"exchange id {exchange.id} is taken", field="id")
        _log.info("exchange created", exchange_id=exchange.id, year=exchange.year)
        await self._refresh_phases()
        return record

    def _check_new(self, new: NewExchange) -> Rules:
        if not 1 <= len(new.name.strip()) <= MAX_NAME:
            raise InvalidInput(f"name must be 1-{MAX_NAME} characters", field="name")
        if not MIN_YEAR <= new.year <= MAX_YEAR:
            raise InvalidInput(f"year must be {MIN_YEAR}-{MAX_YEAR}", field="year")
        if not keys.ID_PATTERN.match(new.region):
            raise InvalidInput(
                "region must be 1-100 letters, digits or . _ @ : + -", field="region"
            )
        rules = new.rules or Rules(budget_tolerance=self.settings.default_budget_tolerance)
        tolerance = rules.budget_tolerance
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidInput(
                "budget_tolerance must be a non-negative number", field="rules.budget_tolerance"
            )
        return rules

    async def get(self, exchange_id: str, principal: Principal) -> ExchangeRecord:
        """Return an exchange's record: to its organizer, an admin, or one of its participants.

        Raises:
            ExchangeNotFound: No such exchange.
            Forbidden: Anyone else.
        """
        record, _ = await self._load(exchange_id)
        await self._authorize_read(record, principal)
        return record

    async def cancel(self, exchange_id: str, principal: Principal) -> ExchangeRecord:
        """Cancel an exchange in REGISTRATION or MATCHING (a running solve then fails to commit).

        Raises:
            WrongPhase: COMMITTED or CANCELLED already.
        """

        async def attempt() -> ExchangeRecord | None:
            record, kv = await self._load(exchange_id)
            self._authorize_organizer(record, principal)
            _require(record, "cancel", Phase.REGISTRATION, Phase.MATCHING)
            cancelled = record.with_phase(
                Phase.CANCELLED, now_ms=self.clock.now_ms(), matching_since_ms=None
            )
            ok = (await self._swap(kv, cancelled)).succeeded
            return cancelled if ok else None

        record = await self._retrying(exchange_id, attempt)
        _log.info("exchange cancelled", exchange_id=exchange_id)
        await self._refresh_phases()
        return record

    # -- participants -------------------------------------------------------------

    async def register(
        self,
        exchange_id: str,
        participants: Sequence[Participant],
        principal: Principal,
        *,
        batch: bool = False,
    ) -> list[Participant]:
        """Register participants, all or none, during REGISTRATION.

        Exclusions and preferences must name participants already registered
        or in the same request.

        Args:
            exchange_id: The exchange.
            participants: Whom to register.
            principal: The organizer (or an admin), or a participant registering themselves.
            batch: Name fields ``participants.<i>.<name>`` in errors (a many-at-once request).

        Raises:
            InvalidInput: Bad fields, an unknown reference, a duplicate in the request,
                or too many participants.
            Conflict: An id already registered (field ``id``), or the wrong phase.
        """
        self._check_batch(participants, batch)

        async def attempt() -> list[Participant] | None:
            record, kv = await self._load(exchange_id)
            self._authorize_register(record, principal, participants)
            _require(record, "register participants", Phase.REGISTRATION)
            total = record.participants + len(participants)
            if total > self.settings.max_participants:
                raise InvalidInput(
                    f"the exchange would have {total} participants; at most "
                    f"{self.settings.max_participants} allowed",
                    field="participants",
                )
            ok = await self._insert(record, kv, participants, batch)
            return list(participants) if ok else None

        stored = await self._retrying(exchange_id, attempt)
        self.metrics.participants.inc(len(stored))
        _log.info("participants registered", exchange_id=exchange_id, count=len(stored))
        return stored

    def _check_batch(self, participants: Sequence[Participant], batch: bool) -> None:
        if not participants:
            raise InvalidInput("at least one participant is needed", field="participants")
        if len(participants) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} participants per request", field="participants"
            )
        seen: set[str] = set()
        for index, participant in enumerate(participants):
            check_participant(participant, field=functools.partial(_field, batch, index))
            if participant.id in seen:
                raise InvalidInput(
                    f"participant {participant.id!r} appears twice in the request",
                    field=_field(batch, index, "id"),
                )
            seen.add(participant.id)

    async def _insert(
        self,
        record: ExchangeRecord,
        kv: KeyValue,
        participants: Sequence[Participant],
        batch: bool,
    ) -> bool:
        ex = record.exchange
        own = {p.id: keys.participant_key(ex.year, ex.id, p.id) for p in participants}
        refs = set().union(*(_references(p) for p in participants)) - own.keys()
        ref_keys = {r: keys.participant_key(ex.year, ex.id, r) for r in refs}
        found = await self.store.get_many([*own.values(), *ref_keys.values()])
        for index, participant in enumerate(participants):
            if own[participant.id] in found:
                raise Conflict(
                    f"participant {participant.id!r} is already registered",
                    field=_field(batch, index, "id"),
                )
        for index, participant in enumerate(participants):
            error = _unknown_reference(
                participant,
                lambda other: other in own or ref_keys[other] in found,
                functools.partial(_field, batch, index),
            )
            if error is not None:
                raise error
        now = self.clock.now_ms()
        updated = replace(
            record, participants=record.participants + len(participants), updated_ms=now
        )
        compares = [Compare(kv.key, kv.mod_revision)]
        compares += [Compare(key, 0) for key in own.values()]
        compares += [Compare(k, found[k].mod_revision) for k in ref_keys.values()]
        ops: list[Operation] = [Put(kv.key, keys.encode_state(updated))]
        ops += [Put(own[p.id], keys.encode_participant(p)) for p in participants]
        return (await self.store.txn(compares, ops)).succeeded

    async def participant(self, exchange_id: str, pid: str, principal: Principal) -> Participant:
        """Return a participant's record, to that participant only."""
        if not is_participant(principal, pid):
            raise Forbidden("only the participant may read their registration")
        record, _ = await self._load(exchange_id)
        kv = await self.store.get(
            keys.participant_key(record.exchange.year, record.exchange.id, pid)
        )
        if kv is None:
            raise ParticipantNotFound(pid)
        return keys.decode_participant(kv.key, kv.value)

    async def update_participant(
        self, exchange_id: str, pid: str, changes: Mapping[str, Any], principal: Principal
    ) -> Participant:
        """Change a participant's fields (not the id) during REGISTRATION.

        Args:
            exchange_id: The exchange.
            pid: Whom to change.
            changes: New values of :class:`Participant` fields other than ``id``.
            principal: The participant themselves, the organizer, or an admin.
        """
        if "id" in changes:
            raise InvalidInput("a participant's id cannot change", field="id")

        async def attempt() -> Participant | None:
            record, kv = await self._load(exchange_id)
            self._authorize_for(record, principal, pid)
            _require(record, "change participants", Phase.REGISTRATION)
            ex = record.exchange
            current = await self.store.get(keys.participant_key(ex.year, ex.id, pid))
            if current is None:
                raise ParticipantNotFound(pid)
            updated = replace(keys.decode_participant(current.key, current.value), **changes)
            check_participant(updated, field=lambda name: name)
            ref_keys = {r: keys.participant_key(ex.year, ex.id, r) for r in _references(updated)}
            found = await self.store.get_many(list(ref_keys.values()))
            error = _unknown_reference(updated, lambda o: ref_keys[o] in found, lambda n: n)
            if error is not None:
                raise error
            compares = [
                Compare(kv.key, kv.mod_revision),
                Compare(current.key, current.mod_revision),
            ]
            compares += [Compare(k, found[k].mod_revision) for k in ref_keys.values()]
            ok = await self.store.txn(
                compares, [Put(current.key, keys.encode_participant(updated))]
            )
            return updated if ok.succeeded else None

        return await self._retrying(exchange_id, attempt)

    async def remove_participant(self, exchange_id: str, pid: str, principal: Principal) -> None:
        """Remove a participant during REGISTRATION; others' references to them are dropped."""

        async def attempt() -> bool | None:
            record, kv = await self._load(exchange_id)
            self._authorize_for(record, principal, pid)
            _require(record, "remove participants", Phase.REGISTRATION)
            ex = record.exchange
            gone = await self.store.get(keys.participant_key(ex.year, ex.id, pid))
            if gone is None:
                raise ParticipantNotFound(pid)
            compares = [Compare(kv.key, kv.mod_revision), Compare(gone.key, gone.mod_revision)]
            updated = replace(
                record, participants=record.participants - 1, updated_ms=self.clock.now_ms()
            )
            ops: list[Operation] = [Delete(gone.key), Put(kv.key, keys.encode_state(updated))]
            for other_kv in (await self.store.range(keys.participants_prefix(ex.year, ex.id))).kvs:
                other = keys.decode_participant(other_kv.key, other_kv.value)
                if pid in other.exclusions or pid in other.preferences:
                    stripped = replace(
                        other,
                        exclusions=other.exclusions - {pid},
                        preferences=tuple(x for x in other.preferences if x != pid),
                    )
                    compares.append(Compare(other_kv.key, other_kv.mod_revision))
                    ops.append(Put(other_kv.key, keys.encode_participant(stripped)))
            return True if (await self.store.txn(compares, ops)).succeeded else None

        await self._retrying(exchange_id, attempt)
        _log.info("participant removed", exchange_id=exchange_id)

    # -- matching -----------------------------------------------------------------

    async def match(self, exchange_id: str, principal: Principal) -> ExchangeRecord:
        """Solve the exchange, seal every match and commit them with the phase, atomically.

        The solve runs in a worker thread. While it runs the exchange is
        MATCHING (a second call gets 409); if it fails or is infeasible the
        exchange goes back to REGISTRATION.

        Raises:
            Infeasible: No valid matching; ``details`` explains why (422).
            WrongPhase: Not in REGISTRATION (409).
            Conflict: The exchange was cancelled while the solve ran.
        """
        record, kv = await self._retrying(
            exchange_id, lambda: self._begin_matching(exchange_id, principal)
        )
        await self._refresh_phases()
        ex = record.exchange
        try:
            rows = (await self.store.range(keys.participants_prefix(ex.year, ex.id))).kvs
            participants = [keys.decode_participant(r.key, r.value) for r in rows]
            sealed, matching = await asyncio.to_thread(self._solve, ex, participants)
        except BaseException as exc:
            self.metrics.solves.labels(ex.region, _outcome(exc)).inc()
            await asyncio.shield(self._abort(record, kv))
            raise
        committed = await self._commit(record, kv, sealed, matching)
        self.metrics.solves.labels(ex.region, Outcome.COMMITTED).inc()
        self.bus.publish(
            keys.EXCHANGE_COMMITTED,
            [ExchangeCommitted(exchange_id=ex.id, year=ex.year, count=len(sealed))],
        )
        _log.info("exchange committed", exchange_id=ex.id, year=ex.year, matches=len(sealed))
        await self._refresh_phases()
        return committed

    async def _begin_matching(
        self, exchange_id: str, principal: Principal
    ) -> tuple[ExchangeRecord, KeyValue] | None:
        record, kv = await self._load(exchange_id)
        self._authorize_organizer(record, principal)
        now = self.clock.now_ms()
        if record.phase is Phase.MATCHING and self._stale(record, now):
            _log.warning("taking over an abandoned solve", exchange_id=exchange_id)
        else:
            _require(record, "match", Phase.REGISTRATION)
        matching = record.with_phase(Phase.MATCHING, now_ms=now, matching_since_ms=now)
        result = await self._swap(kv, matching)
        if not result.succeeded:
            return None
        return matching, replace(kv, mod_revision=result.revision)

    def _stale(self, record: ExchangeRecord, now: int) -> bool:
        since = record.matching_since_ms or 0
        return now - since > self.settings.stale_matching_s * 1000

    def _solve(
        self, exchange: Exchange, participants: list[Participant]
    ) -> tuple[list[SealedMatch], Matching]:
        """Run the matcher and seal each pair; only sealed matches leave (runs in a thread)."""
        started = time.perf_counter()
        try:
            matching = self._matcher(participants, exchange.rules)
        finally:
            self.metrics.matching.labels(exchange.region).observe(time.perf_counter() - started)
        _check_pairs(matching, participants)
        public = {p.id: parse_public_key(p.public_key) for p in participants}
        sealed = [
            seal_match(exchange.id, giver, receiver, public[giver])
            for giver, receiver in matching.pairs.items()
        ]
        return sealed, Matching(pairs={}, cost=matching.cost, optimal=matching.optimal)

    async def _abort(self, record: ExchangeRecord, kv: KeyValue) -> None:
        """Put a MATCHING exchange back to REGISTRATION (if nobody changed it since)."""
        back = record.with_phase(
            Phase.REGISTRATION, now_ms=self.clock.now_ms(), matching_since_ms=None
        )
        try:
            await self._swap(kv, back)
            await self._refresh_phases()
        except NorthpoleError as exc:
            _log.error(
                "could not leave MATCHING", exchange_id=record.exchange.id, error=exc.message
            )

    async def _commit(
        self,
        record: ExchangeRecord,
        kv: KeyValue,
        sealed: Sequence[SealedMatch],
        matching: Matching,
    ) -> ExchangeRecord:
        ex = record.exchange
        committed = record.with_phase(
            Phase.COMMITTED,
            now_ms=self.clock.now_ms(),
            matches=len(sealed),
            cost=matching.cost,
            optimal=matching.optimal,
            commitment_root=commitment_root({m.giver: m.commitment for m in sealed}),
        )
        ops: list[Operation] = [Put(kv.key, keys.encode_state(committed)), self._index(committed)]
        ops += [Put(keys.match_key(ex.year, ex.id, m.giver), keys.encode_match(m)) for m in sealed]
        result = await self.store.txn([Compare(kv.key, kv.mod_revision)], ops)
        if not result.succeeded:
            self.metrics.solves.labels(ex.region, Outcome.FAILED).inc()
            raise Conflict("the exchange changed while it was being matched (cancelled?)")
        return committed

    # -- reading matches -------------------------------------------------------------

    async def sealed_match(
        self, exchange_id: str, pid: str, principal: Principal
    ) -> tuple[ExchangeRecord, SealedMatch]:
        """Return participant ``pid``'s sealed match, to that participant only.

        Raises:
            Forbidden: Anyone but the participant (the organizer and admins included).
            WrongPhase: Not COMMITTED yet.
            ParticipantNotFound: ``pid`` has no match in this exchange.
        """
        if not is_participant(principal, pid):
            raise Forbidden("only the participant may read their match")
        record, _ = await self._load(exchange_id)
        _require(record, "read a match", Phase.COMMITTED)
        kv = await self.store.get(keys.match_key(record.exchange.year, record.exchange.id, pid))
        if kv is None:
            raise ParticipantNotFound(pid)
        return record, keys.decode_match(kv.key, kv.value)

    async def commitments(
        self, exchange_id: str, principal: Principal
    ) -> tuple[ExchangeRecord, dict[str, str]]:
        """Return every giver's commitment (no receivers) for an audit."""
        record, _ = await self._load(exchange_id)
        await self._authorize_read(record, principal)
        _require(record, "list commitments", Phase.COMMITTED)
        ex = record.exchange
        rows = (await self.store.range(keys.matches_prefix(ex.year, ex.id))).kvs
        matches = (keys.decode_match(r.key, r.value) for r in rows)
        return record, {m.giver: m.commitment for m in matches}

    # -- internals ----------------------------------------------------------------

    async def _load(self, exchange_id: str) -> tuple[ExchangeRecord, KeyValue]:
        if not keys.EXCHANGE_ID_PATTERN.match(exchange_id):
            raise ExchangeNotFound(exchange_id)
        index = await self.store.get(keys.index_key(exchange_id))
        if index is None:
            raise ExchangeNotFound(exchange_id)
        year, _ = keys.decode_index(index.key, index.value)
        kv = await self.store.get(keys.state_key(year, exchange_id))
        if kv is None:
            raise ExchangeNotFound(exchange_id)
        return keys.decode_state(kv.key, kv.value), kv

    def _index(self, record: ExchangeRecord) -> Put:
        return Put(keys.index_key(record.exchange.id), keys.encode_index(record))

    async def _swap(self, kv: KeyValue, record: ExchangeRecord) -> TxnResult:
        """Replace the state (and index) if unchanged since ``kv`` was read."""
        return await self.store.txn(
            [Compare(kv.key, kv.mod_revision)],
            [Put(kv.key, keys.encode_state(record)), self._index(record)],
        )

    async def _retrying(self, exchange_id: str, attempt: Callable[[], Awaitable[_T | None]]) -> _T:
        """Run ``attempt`` until it returns a value (``None``: a compare failed; try again).

        Writes to one exchange from this process take turns (one lock per
        exchange), so retries only happen against other processes; those back
        off for a random, growing while.
        """
        lock = self._locks.setdefault(exchange_id, asyncio.Lock())
        async with lock:
            for tries in range(self.settings.write_retries):
                result = await attempt()
                if result is not None:
                    return result
                await asyncio.sleep(self._rng.uniform(0, 0.001 * 2 ** min(tries, 8)))
        raise Unavailable("too many concurrent changes to this exchange; retry", retry_after_s=1.0)

    async def _refresh_phases(self) -> None:
        rows = (await self.store.range(keys.INDEX_ROOT)).kvs
        counts: dict[Phase, int] = {}
        for row in rows:
            _, phase = keys.decode_index(row.key, row.value)
            counts[phase] = counts.get(phase, 0) + 1
        self.metrics.set_phases(counts)

    def _authorize_organizer(self, record: ExchangeRecord, principal: Principal) -> None:
        if not organizes(principal, record.exchange):
            raise Forbidden("only the exchange's organizer (or an admin) may do this")

    def _authorize_for(self, record: ExchangeRecord, principal: Principal, pid: str) -> None:
        if not (organizes(principal, record.exchange) or is_participant(principal, pid)):
            raise Forbidden("only the participant themselves or the organizer may do this")

    def _authorize_register(
        self, record: ExchangeRecord, principal: Principal, participants: Sequence[Participant]
    ) -> None:
        if organizes(principal, record.exchange):
            return
        if len(participants) == 1 and is_participant(principal, participants[0].id):
            return
        raise Forbidden(
            "participants register themselves (token subject = their id); "
            "the organizer may register anyone"
        )

    async def _authorize_read(self, record: ExchangeRecord, principal: Principal) -> None:
        if organizes(principal, record.exchange):
            return
        if principal.role is Role.PARTICIPANT:
            ex = record.exchange
            if await self.store.get(keys.participant_key(ex.year, ex.id, principal.sub)):
                return
        raise Forbidden("only the organizer and the exchange's participants may read it")


def _require(record: ExchangeRecord, action: str, *allowed: Phase) -> None:
    if record.phase not in allowed:
        raise WrongPhase(record, action, allowed)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, Infeasible):
        return Outcome.INFEASIBLE
    if isinstance(exc, InvalidInput):
        return Outcome.INVALID
    return Outcome.FAILED


def exchange_service(
    settings: ExchangeSettings,
    *,
    data_dir: Path,
    registry: CollectorRegistry,
    clock: Clock,
    bus: EventBus,
    ids: IdSource | None,
    matcher: Matcher | None = None,
) -> ExchangeService:
    """Build the exchange part on the embedded SQLite store ``<data_dir>/exchange.db``.

    Args:
        settings: The ``exchange`` settings group.
        data_dir: The data directory (created if missing).
        registry: Where the part's metrics go.
        clock: The clock.
        bus: Where ``exchange.committed`` is published.
        ids: Where exchange ids come from (the Gift ID part's ``generate_list``).
        matcher: The solver (default :func:`default_matcher`).
    """
    from northpole.exchange.sqlite_store import SqliteExchangeStore

    async def open_store() -> ExchangeStore:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = SqliteExchangeStore(
            data_dir / EXCHANGE_DB, busy_timeout_ms=settings.busy_timeout_ms
        )
        return await store.open()

    return ExchangeService(
        settings,
        open_store=open_store,
        registry=registry,
        clock=clock,
        bus=bus,
        ids=ids,
        matcher=matcher,
    )
