"""One of three exchange matcher replicas: leader election, votes and the two-phase commit.

Every replica serves the exchange API on the etcd store. The replicas elect a
leader (:mod:`northpole.coord.election`, election ``matcher``); writes go to
it (:mod:`northpole.exchange.replica_proxy` forwards them). When the leader
matches an exchange:

1. it solves and seals as the embedded edition does
   (:meth:`~northpole.exchange.service.ExchangeService.match`), then this
   module's :meth:`MatcherReplica.commit` takes over;
2. it **prepares** the proposal in etcd (:class:`~northpole.exchange.twophase.TwoPhaseCommit`),
   every write fenced by its leadership, and records its own yes vote;
3. it sends the plaintext proposal to each follower over an authenticated
   replica-internal call (``POST /internal/v1/matcher/votes``, the body signed
   with HMAC-SHA256 under a key derived from the shared auth secret). This is
   not a public API: it answers only that signature, and the plaintext is
   neither stored nor logged on either side;
4. each follower checks it against the participants it reads itself
   (:func:`~northpole.exchange.twophase.judge`: hard constraints, commitments,
   cost within tolerance of its own solve) and records its vote in etcd;
5. with a majority of yes votes the leader **commits** in one small
   transaction fenced by its token; otherwise it aborts.

A new leader first resolves every exchange left in MATCHING (commits a
prepared, majority-accepted proposal, aborts anything else) and only then
takes writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.responses import Response

from northpole.coord.client import EtcdClient
from northpole.coord.election import Election, Leader, Leadership
from northpole.coord.metrics import coord_metrics
from northpole.coord.settings import CoordSettings
from northpole.core.app import Readiness, json_response
from northpole.core.clock import Clock
from northpole.core.errors import Conflict, NorthpoleError, Unauthenticated, Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger
from northpole.exchange import keys
from northpole.exchange.crypto import SealedMatch
from northpole.exchange.etcd_store import EtcdExchangeStore
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.matching import match
from northpole.exchange.model import Exchange, Infeasible, Matching, Phase
from northpole.exchange.replica_keys import NO, YES, VoteRecord
from northpole.exchange.replica_settings import ReplicaSettings
from northpole.exchange.service import ExchangeService
from northpole.exchange.store import Compare, KeyValue
from northpole.exchange.twophase import (
    PlainProposal,
    Prepared,
    ProposalRejected,
    TwoPhaseCommit,
    judge,
)

_log = get_logger(__name__)
#: Answers of a follower that could not vote yet (asked again).
_RETRY_VOTE = frozenset({502, 503, 504})

ELECTION = "matcher"
VOTE_PATH = "/internal/v1/matcher/votes"
SIGNATURE_HEADER = "x-northpole-replica-signature"
_KEY_LABEL = b"northpole matcher replicas v1"


def replica_key(secret: bytes) -> bytes:
    """Derive the replicas' shared signing key from the auth secret."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def sign(key: bytes, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of a replica-internal request body."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def candidate_value(replica: int, address: str) -> str:
    """The election value of a replica: its number and advertised address."""
    return orjson.dumps({"replica": replica, "address": address}).decode()


def parse_candidate(value: str) -> tuple[int, str] | None:
    """Return ``(replica, address)`` of an election value, or ``None`` if it is not one."""
    try:
        data = orjson.loads(value)
        return int(data["replica"]), str(data["address"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class ReplicaMetrics:
    """Votes, two-phase commits and recoveries of one replica."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.votes = Counter(
            "matcher_votes", "Votes this replica cast on proposals.", ["vote"], registry=registry
        )
        self.commits = Counter(
            "matcher_twophase_commits",
            "Two-phase commits this replica led, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "matcher_twophase_seconds",
            "Prepare, votes and commit of one matching, as led by this replica.",
            registry=registry,
        )
        self.recoveries = Counter(
            "matcher_recoveries",
            "Exchanges left in MATCHING that a new leader finished or aborted.",
            ["outcome"],
            registry=registry,
        )


class MatcherReplica:
    """The ``matcher`` part of one replica; also the exchange service's committer.

    Args:
        settings: The ``matcher`` settings.
        coord: The ``coord`` settings (etcd endpoints, prefix, election TTL).
        replica: This replica's number (0 to ``replicas - 1``).
        address: Where the other replicas reach this one.
        secret: The shared auth secret (the internal calls' key is derived from it).
        clock: The clock.
        registry: Where the replica's metrics go.
    """

    name = "matcher"

    def __init__(
        self,
        settings: ReplicaSettings,
        coord: CoordSettings,
        *,
        replica: int,
        address: str,
        secret: bytes,
        clock: Clock,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.coord = coord
        self.replica = replica
        self.address = address
        self.clock = clock
        self.metrics = ReplicaMetrics(registry)
        self._coord_metrics = coord_metrics(registry)
        self._key = replica_key(secret)
        self._service: ExchangeService | None = None
        self._election: Election | None = None
        self._http: httpx.AsyncClient | None = None
        self.leadership: Leadership | None = None
        self.leader: Leader | None = None
        self._recovered = asyncio.Event()
        self._changed = asyncio.Event()

    def attach(self, service: ExchangeService) -> None:
        """Give the replica the exchange service whose matches it commits."""
        self._service = service

    # -- part --------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Campaign and follow the leader while the app runs; resign on the way out."""
        endpoints = self.coord.endpoints or []
        async with (
            EtcdClient(endpoints, timeout_s=self.coord.request_timeout_s) as client,
            httpx.AsyncClient(timeout=self.settings.forward_timeout_s) as http,
        ):
            self._election = Election(
                client,
                ELECTION,
                root=self.coord.prefix,
                ttl_s=self.coord.election_ttl_s,
                margin_ratio=self.coord.safety_margin_ratio,
                metrics=self._coord_metrics,
            )
            self._http = http
            tasks = [
                asyncio.create_task(self._campaign_loop(), name="matcher-campaign"),
                asyncio.create_task(self._observe_loop(), name="matcher-observe"),
            ]
            try:
                yield
            finally:
                await stop_tasks(*tasks)
                leadership, self.leadership = self.leadership, None
                if leadership is not None:
                    with contextlib.suppress(NorthpoleError):
                        await leadership.resign()
                self._http = None

    def router(self) -> APIRouter:
        """The replica-internal vote route (signed requests only)."""
        router = APIRouter(include_in_schema=False)

        @router.post(VOTE_PATH)
        async def vote(request: Request) -> Response:
            body = await request.body()
            given = request.headers.get(SIGNATURE_HEADER, "")
            if not hmac.compare_digest(given, sign(self._key, body)):
                raise Unauthenticated("not signed by a matcher replica")
            return json_response(await self.vote(orjson.loads(body)))

        return router

    def readiness(self) -> Readiness:
        """Ready once a leader is known (and, on the leader, once recovery ran)."""
        if self.leadership is not None and not self._recovered.is_set():
            return Readiness(False, "recovering unfinished matches")
        if self.leader is None:
            return Readiness(False, "no matcher leader")
        return Readiness(True)

    @property
    def service(self) -> ExchangeService:
        """The attached exchange service."""
        if self._service is None:
            raise Unavailable("the matcher replica has no exchange service")
        return self._service

    @property
    def store(self) -> EtcdExchangeStore:
        """The service's etcd store."""
        store = self.service.store
        if not isinstance(store, EtcdExchangeStore):
            raise Unavailable("the matcher replicas need the etcd exchange store")
        return store

    def _tpc(self) -> TwoPhaseCommit:
        return TwoPhaseCommit(
            self.store,
            clock=self.clock,
            replicas=self.settings.replicas,
            batch_ops=self.settings.batch_ops,
            concurrency=self.settings.batch_concurrency,
            step=self._step,
        )

    # -- leadership ----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads, has recovered, and may act now."""
        ls = self.leadership
        return ls is not None and ls.valid() and self._recovered.is_set()

    async def route(self) -> str | None:
        """Return the leader's address for a write, or ``None`` to handle it here.

        Waits up to ``leader_wait_s`` for a leader to be known or to finish
        recovering.

        Raises:
            Unavailable: No leader in time.
        """
        deadline = time.monotonic() + self.settings.leader_wait_s
        while True:
            if self.is_leader:
                return None
            leader = self.leader
            parsed = None if leader is None else parse_candidate(leader.candidate)
            if parsed is not None and parsed[0] != self.replica:
                return parsed[1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("no matcher leader is available; retry", retry_after_s=1.0)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))

    def _set_changed(self) -> None:
        self._changed.set()

    async def _campaign_loop(self) -> None:
        assert self._election is not None  # noqa: S101 - set by lifespan before the loop starts
        candidate = candidate_value(self.replica, self.address)
        while True:
            try:
                leadership = await self._election.campaign(candidate)
            except Unavailable as exc:
                _log.warning("matcher campaign failed; retrying", error=exc.message)
                await asyncio.sleep(0.2)
                continue
            self.leadership = leadership
            self._set_changed()
            try:
                await self._recover(leadership)
                self._recovered.set()
                self._set_changed()
                _log.info("matcher leader ready", replica=self.replica, token=leadership.token)
                reason = await leadership.lost()
                _log.warning("matcher leadership lost", replica=self.replica, reason=reason)
            except Unavailable as exc:
                _log.warning("matcher leadership ended", error=exc.message)
            finally:
                self._recovered.clear()
                self.leadership = None
                self._set_changed()
                with contextlib.suppress(NorthpoleError):
                    await leadership.resign()

    async def _observe_loop(self) -> None:
        assert self._election is not None  # noqa: S101 - set by lifespan before the loop starts
        while True:
            try:
                async for leader in self._election.observe():
                    self.leader = leader
                    self._set_changed()
            except Unavailable as exc:
                _log.warning("matcher leader watch failed; retrying", error=exc.message)
            self.leader = None
            await asyncio.sleep(0.2)

    def fence(self, leadership: Leadership) -> Compare:
        """The store compare that holds only while ``leadership`` stands."""
        return self.store.fence(leadership.key, leadership.token)

    def _leading(self) -> Leadership:
        leadership = self.leadership
        if leadership is None or not leadership.valid():
            raise Unavailable("this replica no longer leads the matchers; retry", retry_after_s=1.0)
        return leadership

    async def _recover(self, leadership: Leadership) -> None:
        """Finish or abort every exchange a previous leader left in MATCHING."""
        tpc = self._tpc()
        repo = self.service.repo
        while True:
            leadership.check()
            try:
                rows = (await self.store.range(keys.INDEX_ROOT)).kvs
                for row in rows:
                    _, phase = keys.decode_index(row.key, row.value)
                    exchange_id = keys.last_segment(row.key)
                    if phase is Phase.MATCHING:
                        record, state = await repo.load(exchange_id)
                        if record.phase is Phase.MATCHING:
                            done = await tpc.resolve(record, state, fence=self.fence(leadership))
                            outcome = "none" if done is None else done.phase.value
                            self.metrics.recoveries.labels(outcome).inc()
                    elif phase is not Phase.REGISTRATION:
                        record, _ = await repo.load(exchange_id)
                        await tpc.discard_uncommitted(record.exchange, fence=self.fence(leadership))
                return
            except Unavailable as exc:
                _log.warning("matcher recovery failed; retrying", error=exc.message)
                await asyncio.sleep(0.2)

    async def _step(self, name: str) -> None:
        if self.settings.failpoint == name:
            _log.warning("failpoint reached; stopping here", step=name)
            await asyncio.Event().wait()

    # -- the committer (leader) -----------------------------------------------------------

    async def commit(
        self,
        record: ExchangeRecord,
        state: KeyValue,
        sealed: Sequence[SealedMatch],
        matching: Matching,
        plain: PlainProposal,
    ) -> ExchangeRecord:
        """Prepare, collect votes, and commit ``sealed`` (the service's committer).

        Raises:
            ProposalRejected: No majority of yes votes (the exchange is back in REGISTRATION).
            Unavailable: This replica stopped leading (before or during the vote or commit).
            Conflict: The exchange changed meanwhile (cancelled).
        """
        leadership = self._leading()
        fence = self.fence(leadership)
        tpc = self._tpc()
        started = time.perf_counter()
        ex = record.exchange
        try:
            prepared = await tpc.prepare(
                record,
                state,
                sealed,
                matching,
                leader=candidate_value(self.replica, self.address),
                token=leadership.token,
                fence=fence,
            )
            own = VoteRecord(self.replica, YES, 0, matching.cost, matching.cost)
            await tpc.record_vote(ex, prepared.kv, own)
            await self._collect_votes(tpc, ex, prepared, plain)
            await tpc.step("voted")
            votes = await tpc.votes(ex, prepared.record.proposal)
            if not tpc.accepted(votes):
                # Votes fail to land when the leadership moves mid-vote (the next
                # leader aborts the open proposal): that is a retry, not a verdict.
                self._leading()
                yes = len([v for v in votes if v.yes])
                raise ProposalRejected(
                    f"the replicas did not accept the matching ({yes} of "
                    f"{self.settings.replicas} voted yes; {tpc.majority} needed); match again"
                )
            committed = await tpc.commit(record, state, prepared, fence=fence)
            if committed is None:
                self._leading()  # a lost leadership is a retry (503), a changed exchange a 409
                raise Conflict("the exchange changed before the commit")
        except BaseException as exc:
            self.metrics.commits.labels(type(exc).__name__).inc()
            await asyncio.shield(self._abort(tpc, record, state, fence))
            raise
        self.metrics.commits.labels("committed").inc()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        with contextlib.suppress(NorthpoleError):
            await tpc.discard_uncommitted(ex, fence=fence)
        return committed

    async def _abort(
        self, tpc: TwoPhaseCommit, record: ExchangeRecord, state: KeyValue, fence: Compare
    ) -> None:
        try:
            await tpc.abort(record, state, fence=fence)
        except NorthpoleError as exc:
            _log.error(
                "could not abort a proposal", exchange_id=record.exchange.id, error=exc.message
            )

    async def _followers(self) -> list[tuple[int, str]]:
        assert self._election is not None  # noqa: S101 - set by lifespan
        found = await self._election.client.get_prefix(self._election.prefix)
        out: dict[int, str] = {}
        for kv in found.kvs:
            parsed = parse_candidate(kv.value.decode(errors="replace"))
            if parsed is not None and parsed[0] != self.replica:
                out[parsed[0]] = parsed[1]
        return sorted(out.items())

    async def _collect_votes(
        self, tpc: TwoPhaseCommit, ex: Exchange, prepared: Prepared, plain: PlainProposal
    ) -> None:
        """Send the plaintext to every follower; return once a majority said yes or all answered."""
        body = orjson.dumps(
            {
                "exchange_id": ex.id,
                "proposal": prepared.record.proposal,
                "pairs": dict(plain.pairs),
                "salts": {g: base64.b64encode(s).decode() for g, s in plain.salts.items()},
            }
        )
        headers = {SIGNATURE_HEADER: sign(self._key, body), "content-type": "application/json"}
        needed = tpc.majority - 1  # the leader's own yes is recorded
        followers = await self._followers()
        if needed <= 0 or not followers:
            return
        http = self._http
        if http is None:
            raise Unavailable("the matcher replica is not running")

        pending = {
            asyncio.ensure_future(_ask_vote(http, address + VOTE_PATH, body, headers))
            for _, address in followers
        }
        yes = 0
        try:
            async with asyncio.timeout(self.settings.vote_timeout_s):
                while pending and yes < needed:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    yes += sum(1 for task in done if task.result())
        except TimeoutError:
            _log.warning("followers' votes timed out", exchange_id=ex.id)
        finally:
            await stop_tasks(*pending)

    # -- the voter (follower) ---------------------------------------------------------------

    async def vote(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check a proposal's plaintext against the stored exchange and record the vote."""
        try:
            exchange_id = str(request["exchange_id"])
            proposal_id = str(request["proposal"])
            pairs = {str(g): str(r) for g, r in dict(request["pairs"]).items()}
            salts = {str(g): base64.b64decode(s) for g, s in dict(request["salts"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise Conflict("malformed proposal") from exc
        plain = PlainProposal(pairs=pairs, salts=salts)
        del pairs, salts
        tpc = self._tpc()
        record, state = await self.service.repo.load(exchange_id)
        ex = record.exchange
        proposal, kv = await tpc.load(ex, proposal_id)
        if record.phase is not Phase.MATCHING or not proposal.prepared:
            raise Conflict("the proposal is not open for votes")
        if proposal.state_revision != state.mod_revision:
            raise Conflict("the proposal was made for another round of matching")
        participants = [p for _, p in await self.service.repo.participants(ex)]
        sealed = await tpc.sealed(ex, proposal_id)

        def check() -> tuple[bool, int, float | None, float | None]:
            try:
                reference = match(participants, ex.rules)
            except Infeasible:
                return False, 1, None, None
            verdict = judge(
                exchange_id=ex.id,
                participants=participants,
                rules=ex.rules,
                plain=plain,
                sealed=sealed,
                proposal=proposal,
                reference=Matching(pairs={}, cost=reference.cost, optimal=reference.optimal),
                tolerance=self.settings.cost_tolerance,
            )
            return verdict.yes, verdict.problems, verdict.cost, verdict.reference_cost

        yes, problems, cost, reference_cost = await asyncio.to_thread(check)
        vote = VoteRecord(self.replica, YES if yes else NO, problems, cost, reference_cost)
        recorded = await tpc.record_vote(ex, kv, vote)
        self.metrics.votes.labels(vote.vote).inc()
        _log.info(
            "voted on a proposal",
            exchange_id=ex.id,
            proposal=proposal_id,
            vote=vote.vote,
            problems=problems,
            recorded=recorded,
        )
        return {"vote": vote.vote if recorded else NO, "problems": problems, "recorded": recorded}


async def _ask_vote(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
) -> bool:
    """Ask one follower for its vote; True if it voted yes.

    A follower that cannot vote right now (etcd electing a leader, a connection
    reset) is asked again, with backoff, until the caller's vote timeout
    cancels the call; only an answer counts as a vote.
    """
    delay = 0.1
    while True:
        try:
            response = await http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            _log.warning("a follower did not answer", follower=url, error=str(exc))
        else:
            if response.status_code not in _RETRY_VOTE:
                return response.status_code == 200 and response.json().get("vote") == YES
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)
