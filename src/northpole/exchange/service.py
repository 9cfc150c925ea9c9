"""The exchange service: lifecycle, the solve, the sealed commit, and reads.

Lifecycle of an exchange::

    REGISTRATION --match--> MATCHING --commit--> COMMITTED
         ^                      |
         └--infeasible/error----┘
    REGISTRATION or MATCHING --cancel--> CANCELLED

Every write is an optimistic transaction on the etcd-shaped store
(:mod:`northpole.exchange.store`) that compares the ``mod_revision`` of the
exchange's state key (:mod:`northpole.exchange.repository`). Entering
MATCHING rewrites the state key, so no registration
(:mod:`northpole.exchange.registration`) lands after the solve has read the
participants; the commit puts every sealed match and the COMMITTED state in
one transaction conditioned on the state key still being the MATCHING one,
so nobody ever sees part of a matching.

Privacy: the plaintext matching exists only in the memory of the solving
thread; it is sealed per giver (:mod:`northpole.exchange.crypto`) before it
leaves :meth:`ExchangeService._solve`, and is never logged, stored or
returned.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from northpole.bus.port import EventBus
from northpole.core.app import Readiness
from northpole.core.auth import Principal, Role
from northpole.core.clock import Clock
from northpole.core.errors import Conflict, InvalidInput, NorthpoleError, Unavailable
from northpole.core.logging import get_logger
from northpole.exchange import keys, policy
from northpole.exchange.crypto import (
    SALT_BYTES,
    SealedMatch,
    commitment_root,
    parse_public_key,
    seal_match,
)
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.metrics import ExchangeMetrics, Outcome
from northpole.exchange.model import Exchange, Infeasible, Matching, Participant, Phase, Rules
from northpole.exchange.policy import NewExchange, ParticipantNotFound
from northpole.exchange.registration import Registrar
from northpole.exchange.repository import ExchangeRepository
from northpole.exchange.settings import ExchangeSettings
from northpole.exchange.store import Compare, ExchangeStore, KeyValue, Operation, Put
from northpole.exchange.twophase import PlainProposal, matches_prefix

_log = get_logger(__name__)

#: Returns ``n`` fresh, unique ids (Gift IDs).
IdSource = Callable[[int], list[int]]
#: Opens the exchange store; called once at start-up.
StoreOpener = Callable[[], Awaitable[ExchangeStore]]
#: Solves one exchange (runs in a worker thread).
Matcher = Callable[[Sequence[Participant], Rules], Matching]

#: The embedded edition's exchange store, in the data directory.
EXCHANGE_DB = "exchange.db"


@dataclass(frozen=True, slots=True)
class ExchangeCommitted:
    """Published on ``exchange.committed``: which exchange, and how many matches (no pairs)."""

    exchange_id: str
    year: int
    count: int


class MatchCommitter(Protocol):
    """Commits a solved matching another way than one transaction (the matcher replicas)."""

    async def commit(
        self,
        record: ExchangeRecord,
        state: KeyValue,
        sealed: Sequence[SealedMatch],
        matching: Matching,
        plain: PlainProposal,
    ) -> ExchangeRecord:
        """Commit ``sealed`` for the MATCHING ``record`` read as ``state``; return the record.

        ``plain`` is the plaintext matching, for the replicas that check it; it
        must not be stored, logged or returned. On failure the committer leaves
        the exchange as it was (or back in REGISTRATION) and raises.
        """
        ...


def default_matcher(participants: Sequence[Participant], rules: Rules) -> Matching:
    """Solve with :func:`northpole.exchange.matching.match` (random among equally good answers)."""
    from northpole.exchange.matching import match

    return match(participants, rules)


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
        committer: Commits a solved matching (default: one transaction of every sealed
            match with the COMMITTED state).
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
        committer: MatchCommitter | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.bus = bus
        self.metrics = ExchangeMetrics.register(registry)
        self._open_store = open_store
        self._ids = ids
        self._matcher = matcher or default_matcher
        self._committer = committer
        self._repo: ExchangeRepository | None = None
        self._registrar: Registrar | None = None

    # -- lifecycle ----------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the store while the app runs."""
        store = await self._open_store()
        repo = ExchangeRepository(store, write_retries=self.settings.write_retries)
        self._repo, self._registrar = repo, Registrar(repo, self.settings, self.clock)
        try:
            await self._refresh_phases()
            yield
        finally:
            self._repo = self._registrar = None
            await store.close()

    def router(self) -> APIRouter:
        """Return the HTTP routes of this part."""
        from northpole.exchange.api import build_router

        return build_router(self)

    def readiness(self) -> Readiness:
        """Ready while the store is open."""
        return Readiness(True) if self._repo is not None else Readiness(False, "store closed")

    @property
    def repo(self) -> ExchangeRepository:
        """The exchange records; raises Unavailable outside the lifespan."""
        if self._repo is None:
            raise Unavailable("the exchange service is not running")
        return self._repo

    @property
    def store(self) -> ExchangeStore:
        """The open store; raises Unavailable outside the lifespan."""
        return self.repo.store

    @property
    def _registration(self) -> Registrar:
        if self._registrar is None:
            raise Unavailable("the exchange service is not running")
        return self._registrar

    # -- exchanges ----------------------------------------------------------------

    async def create(self, new: NewExchange, principal: Principal) -> ExchangeRecord:
        """Create an exchange in REGISTRATION, organized by ``principal``.

        Raises:
            Forbidden: Not an operator or admin.
            InvalidInput: A bad name, year, region or rule.
        """
        policy.authorize_create(principal)
        rules = policy.check_new_exchange(
            new, default_tolerance=self.settings.default_budget_tolerance
        )
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
            [Put(state, keys.encode_state(record)), self.repo.index(record)],
        )
        if not result.succeeded:
            raise Conflict(f"exchange id {exchange.id} is taken", field="id")
        _log.info("exchange created", exchange_id=exchange.id, year=exchange.year)
        await self._refresh_phases()
        return record

    async def get(self, exchange_id: str, principal: Principal) -> ExchangeRecord:
        """Return an exchange's record: to its organizer, an admin, or one of its participants.

        Raises:
            ExchangeNotFound: No such exchange.
            Forbidden: Anyone else.
        """
        record, _ = await self.repo.load(exchange_id)
        await self._authorize_read(record, principal)
        return record

    async def cancel(self, exchange_id: str, principal: Principal) -> ExchangeRecord:
        """Cancel an exchange in REGISTRATION or MATCHING (a running solve then fails to commit).

        Raises:
            WrongPhase: COMMITTED or CANCELLED already.
        """

        async def attempt() -> ExchangeRecord | None:
            record, kv = await self.repo.load(exchange_id)
            policy.authorize_organizer(record, principal)
            policy.require(record, "cancel", Phase.REGISTRATION, Phase.MATCHING)
            cancelled = record.with_phase(
                Phase.CANCELLED, now_ms=self.clock.now_ms(), matching_since_ms=None
            )
            ok = (await self.repo.swap(kv, cancelled)).succeeded
            return cancelled if ok else None

        record = await self.repo.retrying(exchange_id, attempt)
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
        stored = await self._registration.register(
            exchange_id, participants, principal, batch=batch
        )
        self.metrics.participants.inc(len(stored))
        _log.info("participants registered", exchange_id=exchange_id, count=len(stored))
        return stored

    async def participant(self, exchange_id: str, pid: str, principal: Principal) -> Participant:
        """Return a participant's record, to that participant only."""
        return await self._registration.read(exchange_id, pid, principal)

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
        return await self._registration.update(exchange_id, pid, changes, principal)

    async def remove_participant(self, exchange_id: str, pid: str, principal: Principal) -> None:
        """Withdraw a participant during REGISTRATION; others' references to them are dropped."""
        await self._registration.remove(exchange_id, pid, principal)
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
        record, kv = await self.repo.retrying(
            exchange_id, lambda: self._begin_matching(exchange_id, principal)
        )
        await self._refresh_phases()
        ex = record.exchange
        try:
            participants = [p for _, p in await self.repo.participants(ex)]
            sealed, matching, plain = await asyncio.to_thread(self._solve, ex, participants)
        except BaseException as exc:
            self.metrics.solves.labels(ex.region, _outcome(exc)).inc()
            await asyncio.shield(self._abort(record, kv))
            raise
        if self._committer is None:
            committed = await self._commit(record, kv, sealed, matching)
        else:
            try:
                committed = await self._committer.commit(record, kv, sealed, matching, plain)
            except BaseException:
                self.metrics.solves.labels(ex.region, Outcome.FAILED).inc()
                await self._refresh_phases()
                raise
            finally:
                del plain
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
        record, kv = await self.repo.load(exchange_id)
        policy.authorize_organizer(record, principal)
        now = self.clock.now_ms()
        if record.phase is Phase.MATCHING and self._stale(record, now):
            _log.warning("taking over an abandoned solve", exchange_id=exchange_id)
        else:
            policy.require(record, "match", Phase.REGISTRATION)
        matching = record.with_phase(Phase.MATCHING, now_ms=now, matching_since_ms=now)
        result = await self.repo.swap(kv, matching)
        if not result.succeeded:
            return None
        return matching, replace(kv, mod_revision=result.revision)

    def _stale(self, record: ExchangeRecord, now: int) -> bool:
        since = record.matching_since_ms or 0
        return now - since > self.settings.stale_matching_s * 1000

    def _solve(
        self, exchange: Exchange, participants: list[Participant]
    ) -> tuple[list[SealedMatch], Matching, PlainProposal]:
        """Run the matcher and seal each pair (runs in a thread).

        Only sealed matches leave, except for a committer that checks the
        plaintext with the other replicas: it gets the pairs and salts too
        (an empty :class:`PlainProposal` otherwise).
        """
        started = time.perf_counter()
        try:
            matching = self._matcher(participants, exchange.rules)
        finally:
            self.metrics.matching.labels(exchange.region).observe(time.perf_counter() - started)
        policy.check_pairs(matching, participants)
        public = {p.id: parse_public_key(p.public_key) for p in participants}
        salts = {giver: secrets.token_bytes(SALT_BYTES) for giver in matching.pairs}
        sealed = [
            seal_match(exchange.id, giver, receiver, public[giver], salt=salts[giver])
            for giver, receiver in matching.pairs.items()
        ]
        plain = PlainProposal(pairs={}, salts={})
        if self._committer is not None:
            plain = PlainProposal(pairs=dict(matching.pairs), salts=salts)
        return sealed, Matching(pairs={}, cost=matching.cost, optimal=matching.optimal), plain

    async def _abort(self, record: ExchangeRecord, kv: KeyValue) -> None:
        """Put a MATCHING exchange back to REGISTRATION (if nobody changed it since)."""
        back = record.with_phase(
            Phase.REGISTRATION, now_ms=self.clock.now_ms(), matching_since_ms=None
        )
        try:
            await self.repo.swap(kv, back)
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
        ops: list[Operation] = [
            Put(kv.key, keys.encode_state(committed)),
            self.repo.index(committed),
        ]
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
        policy.authorize_own(principal, pid, "match")
        record, _ = await self.repo.load(exchange_id)
        policy.require(record, "read a match", Phase.COMMITTED)
        kv = await self.store.get(await matches_prefix(self.store, record.exchange) + pid)
        if kv is None:
            raise ParticipantNotFound(pid)
        return record, keys.decode_match(kv.key, kv.value)

    async def commitments(
        self, exchange_id: str, principal: Principal
    ) -> tuple[ExchangeRecord, dict[str, str]]:
        """Return every giver's commitment (no receivers) for an audit."""
        record, _ = await self.repo.load(exchange_id)
        await self._authorize_read(record, principal)
        policy.require(record, "list commitments", Phase.COMMITTED)
        ex = record.exchange
        rows = (await self.store.range(await matches_prefix(self.store, ex))).kvs
        matches = (keys.decode_match(r.key, r.value) for r in rows)
        return record, {m.giver: m.commitment for m in matches}

    # -- internals ----------------------------------------------------------------

    async def _authorize_read(self, record: ExchangeRecord, principal: Principal) -> None:
        registered = False
        if principal.role is Role.PARTICIPANT:
            registered = await self.repo.participant(record.exchange, principal.sub) is not None
        policy.authorize_read(record, principal, registered=registered)

    async def _refresh_phases(self) -> None:
        self.metrics.set_phases(await self.repo.phase_counts())


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
