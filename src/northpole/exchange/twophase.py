"""The matcher replicas' two-phase commit of a matching, on any exchange store.

A matching of 100,000 participants does not fit in one etcd transaction
(``--max-txn-ops`` 128, 1.5 MiB a request), so it is committed in two phases
behind one small transaction (keys: :mod:`northpole.exchange.replica_keys`):

1. **Prepare** (the leader, every write fenced by its leadership):

   a. put the proposal record (``prepared: false``), conditioned on the
      exchange's MATCHING state being the one the solve read;
   b. put the sealed matches under ``{ex}/sealed/{proposal}/`` in batches of
      at most ``batch_ops`` keys (a few batches in flight at once);
   c. rewrite the proposal record with ``prepared: true``: the proposal is
      complete.

2. **Vote**: each replica checks the plaintext (:func:`judge`) and records a
   vote under ``{ex}/votes/{proposal}/``, conditioned on the prepared record.

3. **Commit**: one transaction of three keys, conditioned on the state key
   (still the same MATCHING), the prepared proposal record (unchanged) and the
   leader's fencing key (its leadership stands): COMMITTED state naming the
   proposal's cost and commitment root, the index, and ``{ex}/committed`` =
   the proposal id.

Readers resolve matches through ``{ex}/committed`` (:func:`matches_prefix`),
which appears in the same revision as COMMITTED, so nobody sees a partial
matching: before it there is none, after it there is all of it. Proposals that
do not commit are deleted (:meth:`TwoPhaseCommit.discard`).

**Recovery** (:meth:`TwoPhaseCommit.resolve`, run by a new leader for every
exchange left in MATCHING): a proposal that is prepared, made for the current
MATCHING state and accepted by a majority of replicas is committed; anything
else is aborted (back to REGISTRATION) and its proposals deleted. Either way
the exchange ends with no matching or exactly one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from northpole.core.clock import Clock
from northpole.core.errors import Conflict, InvalidInput
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger
from northpole.exchange import keys
from northpole.exchange import replica_keys as rk
from northpole.exchange.crypto import SealedMatch, commitment, commitment_root
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.matching import cost_of, validate
from northpole.exchange.model import Exchange, Matching, Participant, Phase, Rules
from northpole.exchange.replica_keys import ProposalRecord, VoteRecord
from northpole.exchange.store import Compare, Delete, ExchangeStore, KeyValue, Operation, Put

_log = get_logger(__name__)

#: Called with the name of each step as the leader reaches it (fault tests pause there).
StepHook = Callable[[str], Awaitable[None]]
#: The steps, in order.
STEPS = ("prepare", "prepare_batch", "prepared", "voted", "committed")


@dataclass(frozen=True, slots=True)
class PlainProposal:
    """The plaintext of a proposal: who gives to whom, and each commitment's salt.

    It lives only in the memory of the leader and of the followers checking it;
    its ``repr`` shows nothing, so it cannot reach a log by accident.
    """

    pairs: Mapping[str, str] = field(repr=False)
    salts: Mapping[str, bytes] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A complete proposal: its record and the stored key (whose revision the commit compares)."""

    record: ProposalRecord
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Verdict:
    """A replica's judgement of a proposal (:func:`judge`)."""

    yes: bool
    problems: int
    cost: float | None
    reference_cost: float | None


class ProposalRejected(Conflict):
    """The replicas did not accept the proposal (no majority of yes votes); nothing was stored."""

    code = "proposal_rejected"


def new_proposal_id() -> str:
    """Return a fresh random proposal id (16 hex digits)."""
    return secrets.token_hex(8)


def judge(
    *,
    exchange_id: str,
    participants: Sequence[Participant],
    rules: Rules,
    plain: PlainProposal,
    sealed: Sequence[SealedMatch],
    proposal: ProposalRecord,
    reference: Matching,
    tolerance: float,
) -> Verdict:
    """Check a proposal against the stored participants; return the vote (pure).

    Yes only if: every hard constraint holds (:func:`validate`); every stored
    commitment is the commitment to the plaintext pair with its salt (so the
    stored proposal is the one checked); the cost is the one the proposal
    claims; and it is within ``tolerance`` of ``reference`` (this replica's own
    solve): exactly at most its cost when both are proven optimal, at most
    ``(1 + tolerance)`` times it otherwise.
    """
    try:
        problems = len(validate(participants, rules, plain.pairs))
        cost = cost_of(participants, rules, plain.pairs)
    except InvalidInput:  # the pairs name someone unknown
        return Verdict(False, 1, None, reference.cost)
    by_giver = {m.giver: m for m in sealed}
    if len(by_giver) != len(plain.pairs) or len(sealed) != proposal.count:
        problems += 1
    for giver, receiver in plain.pairs.items():
        stored = by_giver.get(giver)
        salt = plain.salts.get(giver)
        if stored is None or salt is None:
            problems += 1
        elif commitment(salt, exchange_id, giver, receiver) != stored.commitment:
            problems += 1
    if abs(cost - proposal.cost) > 1e-9:
        problems += 1
    if proposal.optimal and reference.optimal:
        limit = reference.cost + 1e-9
    else:
        limit = reference.cost * (1.0 + tolerance) + 1e-9
    if cost > limit:
        problems += 1
    return Verdict(problems == 0, problems, cost, reference.cost)


async def matches_prefix(store: ExchangeStore, exchange: Exchange) -> str:
    """Return the prefix of a COMMITTED exchange's sealed matches (through ``{ex}/committed``)."""
    pointer = await store.get(rk.committed_key(exchange.year, exchange.id))
    if pointer is None:
        return keys.matches_prefix(exchange.year, exchange.id)
    proposal = rk.decode_committed(pointer.key, pointer.value)
    return rk.sealed_prefix(exchange.year, exchange.id, proposal)


class TwoPhaseCommit:
    """Prepare, vote, commit, abort and recover proposals on one store.

    Args:
        store: The exchange store (etcd in the cluster edition).
        clock: Stamps records.
        replicas: How many replicas vote; a majority is ``replicas // 2 + 1``.
        batch_ops: Sealed matches per prepare transaction (etcd: at most ``--max-txn-ops``).
        concurrency: Prepare transactions in flight at once.
        step: Called at each step of :data:`STEPS` (fault tests pause the leader there).
    """

    def __init__(
        self,
        store: ExchangeStore,
        *,
        clock: Clock,
        replicas: int = 3,
        batch_ops: int = 128,
        concurrency: int = 4,
        step: StepHook | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.replicas = replicas
        self.majority = replicas // 2 + 1
        self.batch_ops = batch_ops
        self.concurrency = concurrency
        self._step = step

    async def step(self, name: str) -> None:
        """Report reaching step ``name``."""
        if self._step is not None:
            await self._step(name)

    # -- phase 1: prepare ----------------------------------------------------------

    async def prepare(
        self,
        record: ExchangeRecord,
        state: KeyValue,
        sealed: Sequence[SealedMatch],
        matching: Matching,
        *,
        leader: str,
        token: int,
        fence: Compare | None,
        proposal_id: str | None = None,
    ) -> Prepared:
        """Store a complete proposal of ``sealed`` for the MATCHING ``record``.

        Raises:
            Conflict: The exchange changed (cancelled) or the leadership was lost.
        """
        ex = record.exchange
        pid = proposal_id or new_proposal_id()
        proposal = ProposalRecord(
            proposal=pid,
            exchange_id=ex.id,
            leader=leader,
            token=token,
            state_revision=state.mod_revision,
            count=len(sealed),
            cost=matching.cost,
            optimal=matching.optimal,
            commitment_root=_root(sealed),
            created_ms=self.clock.now_ms(),
        )
        fences = [fence] if fence is not None else []
        key = rk.proposal_key(ex.year, ex.id, pid)
        await self.step("prepare")
        first = await self.store.txn(
            [Compare(state.key, state.mod_revision), Compare(key, 0), *fences],
            [Put(key, proposal.encode())],
        )
        if not first.succeeded:
            raise Conflict("the exchange or the leadership changed before prepare")
        await self._put_batches(ex, pid, sealed, fences)
        done = replace(proposal, prepared=True)
        final = await self.store.txn(
            [Compare(state.key, state.mod_revision), Compare(key, first.revision), *fences],
            [Put(key, done.encode())],
        )
        if not final.succeeded:
            raise Conflict("the exchange or the leadership changed during prepare")
        kv = KeyValue(key, done.encode(), first.revision, final.revision)
        await self.step("prepared")
        return Prepared(done, kv)

    async def _put_batches(
        self, ex: Exchange, pid: str, sealed: Sequence[SealedMatch], fences: list[Compare]
    ) -> None:
        batches = [sealed[i : i + self.batch_ops] for i in range(0, len(sealed), self.batch_ops)]
        gate = asyncio.Semaphore(self.concurrency)
        first_done = asyncio.Event()

        async def put(index: int, batch: Sequence[SealedMatch]) -> None:
            if index > 0:
                await first_done.wait()
            async with gate:
                ops: list[Operation] = [
                    Put(rk.sealed_key(ex.year, ex.id, pid, m.giver), keys.encode_match(m))
                    for m in batch
                ]
                result = await self.store.txn(fences, ops)
                if not result.succeeded:
                    raise Conflict("the leadership was lost during prepare")
            if index == 0:
                await self.step("prepare_batch")
                first_done.set()

        tasks = [asyncio.ensure_future(put(i, b)) for i, b in enumerate(batches)]
        try:
            await asyncio.gather(*tasks)
        finally:
            await stop_tasks(*tasks)

    # -- phase 2: votes ----------------------------------------------------------------

    async def load(self, exchange: Exchange, proposal_id: str) -> tuple[ProposalRecord, KeyValue]:
        """Return a proposal and its key.

        Raises:
            Conflict: No such proposal.
        """
        kv = await self.store.get(rk.proposal_key(exchange.year, exchange.id, proposal_id))
        if kv is None:
            raise Conflict(f"no proposal {proposal_id} for exchange {exchange.id}")
        return rk.decode_proposal(kv.key, kv.value), kv

    async def sealed(self, exchange: Exchange, proposal_id: str) -> list[SealedMatch]:
        """Return the proposal's sealed matches."""
        rows = await self.store.range(rk.sealed_prefix(exchange.year, exchange.id, proposal_id))
        return [keys.decode_match(row.key, row.value) for row in rows.kvs]

    async def record_vote(self, exchange: Exchange, proposal: KeyValue, vote: VoteRecord) -> bool:
        """Store ``vote`` on the prepared proposal ``proposal``; False if it changed or left."""
        pid = keys.last_segment(proposal.key)
        result = await self.store.txn(
            [Compare(proposal.key, proposal.mod_revision)],
            [Put(rk.vote_key(exchange.year, exchange.id, pid, vote.replica), vote.encode())],
        )
        return result.succeeded

    async def votes(self, exchange: Exchange, proposal_id: str) -> list[VoteRecord]:
        """Return the votes recorded on a proposal."""
        rows = await self.store.range(rk.votes_prefix(exchange.year, exchange.id, proposal_id))
        return [rk.decode_vote(row.key, row.value) for row in rows.kvs]

    def accepted(self, votes: Sequence[VoteRecord]) -> bool:
        """Whether a majority of the replicas voted yes."""
        return len({v.replica for v in votes if v.yes}) >= self.majority

    # -- phase 3: commit, or abort ------------------------------------------------------

    async def commit(
        self,
        record: ExchangeRecord,
        state: KeyValue,
        prepared: Prepared,
        *,
        fence: Compare | None,
    ) -> ExchangeRecord | None:
        """Flip the exchange to COMMITTED on ``prepared``, in one small transaction.

        Returns the committed record, or ``None`` when a compare failed (the
        state, the proposal or the leadership changed): nothing was committed.
        """
        ex = record.exchange
        p = prepared.record
        committed = record.with_phase(
            Phase.COMMITTED,
            now_ms=self.clock.now_ms(),
            matching_since_ms=None,
            matches=p.count,
            cost=p.cost,
            optimal=p.optimal,
            commitment_root=p.commitment_root,
        )
        compares = [
            Compare(state.key, state.mod_revision),
            Compare(prepared.kv.key, prepared.kv.mod_revision),
        ]
        if fence is not None:
            compares.append(fence)
        result = await self.store.txn(
            compares,
            [
                Put(state.key, keys.encode_state(committed)),
                Put(keys.index_key(ex.id), keys.encode_index(committed)),
                Put(rk.committed_key(ex.year, ex.id), rk.encode_committed(p.proposal)),
            ],
        )
        if not result.succeeded:
            return None
        await self.step("committed")
        return committed

    async def abort(
        self, record: ExchangeRecord, state: KeyValue, *, fence: Compare | None
    ) -> ExchangeRecord | None:
        """Put the MATCHING exchange back to REGISTRATION and delete its proposals.

        Returns the new record, or ``None`` if the state had changed (then only
        proposals that did not commit are deleted).
        """
        back = record.with_phase(
            Phase.REGISTRATION, now_ms=self.clock.now_ms(), matching_since_ms=None
        )
        compares = [Compare(state.key, state.mod_revision)]
        if fence is not None:
            compares.append(fence)
        result = await self.store.txn(
            compares,
            [
                Put(state.key, keys.encode_state(back)),
                Put(keys.index_key(back.exchange.id), keys.encode_index(back)),
            ],
        )
        if result.succeeded:
            await self.discard_uncommitted(record.exchange, fence=fence)
        return back if result.succeeded else None

    async def discard_uncommitted(self, exchange: Exchange, *, fence: Compare | None) -> int:
        """Delete every proposal of ``exchange`` but the committed one; return how many.

        Every delete is fenced: a deposed leader cannot delete a proposal the
        new leader is committing.
        """
        pointer = await self.store.get(rk.committed_key(exchange.year, exchange.id))
        keep = None if pointer is None else rk.decode_committed(pointer.key, pointer.value)
        rows = await self.store.range(rk.proposals_prefix(exchange.year, exchange.id))
        gone = [keys.last_segment(r.key) for r in rows.kvs if keys.last_segment(r.key) != keep]
        for pid in gone:
            await self.discard(exchange, pid, fence=fence)
        return len(gone)

    async def discard(self, exchange: Exchange, proposal_id: str, *, fence: Compare | None) -> None:
        """Delete one proposal: its record first (so it can no longer commit), then the rest.

        Raises:
            Conflict: The fence failed (this leader was deposed); nothing more is deleted.
        """
        year, eid = exchange.year, exchange.id
        fences = [] if fence is None else [fence]
        record_key = rk.proposal_key(year, eid, proposal_id)
        pointer = rk.committed_key(year, eid)
        current = await self.store.get(pointer)
        guard = Compare(pointer, 0 if current is None else current.mod_revision)
        if not (await self.store.txn([guard, *fences], [Delete(record_key)])).succeeded:
            raise Conflict("the leadership or the committed proposal changed; not discarding")
        for prefix in (
            rk.sealed_prefix(year, eid, proposal_id),
            rk.votes_prefix(year, eid, proposal_id),
        ):
            while True:
                rows = (await self.store.range(prefix, limit=self.batch_ops)).kvs
                if not rows:
                    break
                result = await self.store.txn(fences, [Delete(row.key) for row in rows])
                if not result.succeeded:
                    raise Conflict("the leadership changed while discarding a proposal")
        _log.info("proposal discarded", exchange_id=eid, proposal=proposal_id)

    # -- recovery -----------------------------------------------------------------------

    async def resolve(
        self, record: ExchangeRecord, state: KeyValue, *, fence: Compare | None
    ) -> ExchangeRecord | None:
        """Finish or abort an exchange a dead leader left in MATCHING.

        Commits the proposal that is prepared, made for this MATCHING state and
        accepted by a majority; otherwise aborts. Returns the new record
        (``None``: the state changed meanwhile, nothing done).
        """
        ex = record.exchange
        rows = await self.store.range(rk.proposals_prefix(ex.year, ex.id))
        for row in rows.kvs:
            proposal = rk.decode_proposal(row.key, row.value)
            if not proposal.prepared or proposal.state_revision != state.mod_revision:
                continue
            if not self.accepted(await self.votes(ex, proposal.proposal)):
                continue
            committed = await self.commit(record, state, Prepared(proposal, row), fence=fence)
            if committed is not None:
                _log.info("finished a prepared proposal", exchange_id=ex.id, proposal=p_id(row))
                await self.discard_uncommitted(ex, fence=fence)
            return committed
        _log.info("aborted an unfinished match", exchange_id=ex.id, proposals=len(rows.kvs))
        return await self.abort(record, state, fence=fence)


def p_id(row: KeyValue) -> str:
    """The proposal id of a proposal record's key."""
    return keys.last_segment(row.key)


def _root(sealed: Sequence[SealedMatch]) -> str:
    return commitment_root({m.giver: m.commitment for m in sealed})
