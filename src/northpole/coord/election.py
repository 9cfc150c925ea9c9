"""Leader election on etcd, with fencing tokens.

The same protocol as etcd's own ``concurrency.Election``: every candidate puts
``{root}/elections/{name}/{lease_id:016x}`` on its own lease; the candidate
whose key has the lowest create revision leads. A candidate waits for the
deletion of every key created before its own (a resignation, or a lease that
expired), so leadership passes in queue order, with no thundering herd.

Safety: a leader acts only while :meth:`Leadership.check` passes, that is while
its lease's local, monotonic deadline (see :mod:`northpole.coord.deadline`)
has not passed; etcd cannot expire the lease, and so cannot let the next
candidate lead, before that. For writes to etcd itself the guarantee is exact:
:meth:`Leadership.fence` is a transaction compare on the leader key's create
revision (the *fencing token*), which no longer holds once the key is gone,
whatever the old leader believes. Other stores can keep the highest token they
have seen and refuse lower ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from northpole.coord import keys
from northpole.coord.client import Compare, EtcdClient, Get, KeyValue, Put
from northpole.coord.leases import LeaseKeeper
from northpole.coord.metrics import CoordMetrics
from northpole.core.errors import Unavailable
from northpole.core.lifecycle import stop_tasks
from northpole.core.logging import get_logger

_log = get_logger(__name__)

#: Pause before reading again after an etcd failure while waiting for a turn.
RETRY_S = 0.1


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads an election: the candidate's name and its fencing token."""

    candidate: str
    key: bytes
    token: int


def leader_of(kvs: list[KeyValue]) -> Leader | None:
    """Return the leader among candidate keys: the lowest create revision, if any."""
    if not kvs:
        return None
    first = min(kvs, key=lambda kv: kv.create_revision)
    return Leader(first.value.decode(errors="replace"), first.key, first.create_revision)


class Election:
    """One named election among any number of candidates.

    Args:
        client: An open etcd client.
        name: The election's name (a key segment, for example ``matcher``).
        root: The key root (``coord.prefix``).
        ttl_s: Candidate lease TTL (``coord.election_ttl_s``).
        margin_ratio: Share of the TTL given up for safety.
        metrics: Where ``consensus_leader_changes_total`` is counted, if anywhere.
        monotonic: The clock of lease deadlines (tests may inject one).
    """

    def __init__(
        self,
        client: EtcdClient,
        name: str,
        *,
        root: str = keys.DEFAULT_ROOT,
        ttl_s: int = 1,
        margin_ratio: float = 0.2,
        metrics: CoordMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.name = keys.check_segment(name, field="election")
        self.root = root
        self.prefix = keys.election_prefix(root, name)
        self.ttl_s = ttl_s
        self.margin_ratio = margin_ratio
        self.metrics = metrics
        self._monotonic = monotonic

    async def leader(self) -> Leader | None:
        """Return the current leader, or ``None`` when nobody campaigns."""
        return leader_of((await self.client.get_prefix(self.prefix)).kvs)

    async def campaign(self, candidate: str) -> Leadership:
        """Join the queue and wait until this candidate leads.

        Cancel the call to stop waiting (the candidate's key is then revoked).

        Raises:
            Unavailable: etcd failed, or the candidate's lease was lost while waiting.
        """
        keeper = LeaseKeeper(
            self.client,
            self.ttl_s,
            margin_ratio=self.margin_ratio,
            purpose="election",
            metrics=self.metrics,
            monotonic=self._monotonic,
        )
        await keeper.start()
        key = keys.candidate_key(self.root, self.name, keeper.lease_id)
        try:
            result = await self.client.txn(
                [Compare.absent(key)], [Put(key, candidate.encode(), keeper.lease_id)], [Get(key)]
            )
            token = result.revision if result.succeeded else result.ranges[0][0].create_revision
            await self._wait_turn(token, keeper)
            keeper.check()
        except BaseException:
            await asyncio.shield(keeper.close(revoke=True))
            raise
        if self.metrics is not None:
            self.metrics.leader_changes.labels(self.name).inc()
            self.metrics.is_leader.labels(self.name).set(1)
        _log.info("elected leader", election=self.name, candidate=candidate, token=token)
        return Leadership(self, keeper, key, token, candidate)

    async def _wait_turn(self, token: int, keeper: LeaseKeeper) -> None:
        """Return once no key created before revision ``token`` is left.

        etcd failures while waiting (a member dies, a watch breaks) are retried
        for as long as the candidate's lease holds.
        """
        while True:
            keeper.check()
            try:
                found = await self.client.get_prefix(self.prefix)
            except Unavailable as exc:
                _log.warning("election read failed; retrying", error=exc.message)
                await asyncio.sleep(RETRY_S)
                continue
            ahead = [kv for kv in found.kvs if kv.create_revision < token]
            if not ahead:
                return
            last = max(ahead, key=lambda kv: kv.create_revision)
            deleted = asyncio.ensure_future(self._deleted(last.key, found.revision + 1))
            lost = asyncio.ensure_future(keeper.wait_lost())
            try:
                await asyncio.wait({deleted, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await stop_tasks(deleted, lost)
            if lost.done() and not lost.cancelled():
                raise Unavailable(f"lost the candidate lease while waiting: {lost.result()}")
            if not deleted.cancelled() and (error := deleted.exception()) is not None:
                if not isinstance(error, Unavailable):
                    raise error
                _log.warning("election watch failed; retrying", error=error.message)
                await asyncio.sleep(RETRY_S)

    async def _deleted(self, key: bytes, start_revision: int) -> None:
        async with self.client.watch_prefix(self.prefix, start_revision=start_revision) as watch:
            async for batch in watch:
                if any(ev.kind == "DELETE" and ev.kv.key == key for ev in batch):
                    return

    async def observe(self) -> AsyncIterator[Leader | None]:
        """Yield the leader now, then each time it changes (``None``: no candidate left).

        Raises:
            Unavailable: etcd failed; call again to resume.
        """
        found = await self.client.get_prefix(self.prefix)
        candidates = {kv.key: kv for kv in found.kvs}
        current = leader_of(list(candidates.values()))
        yield current
        async with self.client.watch_prefix(self.prefix, start_revision=found.revision + 1) as w:
            async for batch in w:
                for event in batch:
                    if event.kind == "DELETE":
                        candidates.pop(event.kv.key, None)
                    else:
                        candidates[event.kv.key] = event.kv
                now = leader_of(list(candidates.values()))
                if now != current:
                    current = now
                    yield current


class Leadership:
    """This process leads an election, for as long as :meth:`check` passes."""

    def __init__(
        self, election: Election, keeper: LeaseKeeper, key: bytes, token: int, candidate: str
    ) -> None:
        self.election = election
        self.keeper = keeper
        self.key = key
        self.token = token
        self.candidate = candidate

    def valid(self) -> bool:
        """Whether this process may act as the leader now."""
        return self.keeper.valid()

    def check(self) -> None:
        """Raise :class:`Unavailable` unless this process may act as the leader now."""
        self.keeper.check()

    async def lost(self) -> str:
        """Wait until leadership is lost or resigned; return why."""
        return await self.keeper.wait_lost()

    def fence(self) -> Compare:
        """Return the compare that holds only while this leadership stands (for a txn)."""
        return Compare.created_at(self.key, self.token)

    async def put(self, key: bytes, value: bytes) -> bool:
        """Write ``key`` only if this process still leads; return whether it was written.

        Raises:
            Unavailable: The local deadline passed (nothing is sent then), or etcd failed.
        """
        self.check()
        result = await self.election.client.txn([self.fence()], [Put(key, value)])
        return result.succeeded

    async def resign(self) -> None:
        """Step down: revoke the lease so the next candidate leads at once."""
        await self.keeper.close(revoke=True)
        if self.election.metrics is not None:
            self.election.metrics.is_leader.labels(self.election.name).set(0)
