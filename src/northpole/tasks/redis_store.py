"""The cluster edition's task store: Redis (one server, Sentinel, or Redis Cluster).

Lifecycle, as :class:`~northpole.tasks.sqlite_store.SqliteTaskStore`::

    async with RedisTaskStore("redis://127.0.0.1:6379/0", partitions=16, aging_ms=1_000,
                              policy=policy) as store:
        tasks, events = await store.submit(batch, now_ms=clock.now_ms())

Key layout: :mod:`northpole.tasks.redis_keys`. Scripts: ``tasks/lua/*.lua``,
run by :mod:`northpole.tasks.redis_scripts`. Records: :mod:`northpole.tasks.redis_codec`.
The paths live in modules of their own: submits :mod:`~northpole.tasks.redis_submit`,
claims and heartbeats :mod:`~northpole.tasks.redis_claim`, cross-partition
follow-ups :mod:`~northpole.tasks.redis_follow`, statistics
:mod:`~northpole.tasks.redis_report`; this module holds the lifecycle, the
id -> partition directory and the single-partition transitions.

**What is atomic.** Every transition of tasks of one partition is one Lua
script on the partition's slot: claim, start, complete (with the release of
dependents in the same partition), fail and retry, cancel, redrive, lease
reclaim, deadline expiry, and the cascade of a failure through dependents in
the same partition. Several tasks per call: a claim takes up to ``limit`` tasks
per partition in one script, :meth:`complete_many` and concurrent
:meth:`complete` calls (coalesced) complete every task of a partition in one
script (each keeps its own result), the sweeper handles a partition in one
script.

**What crosses partitions, and how.**

* *Dependencies between partitions.* Completing (or failing) a task whose
  dependent lives in another partition records a follow-up in the partition's
  ``outbox`` in the same script, then applies it with the ``apply`` script on
  the dependent's partition (release, or fail with ``dependency_failed``) and
  removes it. Follow-ups are idempotent; if the process dies in between, the
  sweeper (:mod:`~northpole.tasks.redis_sweep`) applies every follow-up older
  than ``outbox_grace_ms``. So a dependent is released or failed *at least
  once, eventually*, not in the same instant as its dependency.
* *Submit* reads what it needs (idempotency keys, dependency states),
  validates the whole batch (unknown dependencies, cycles, duplicate ids)
  before writing anything, reserves the batch's idempotency keys in one script
  (all or none), writes the id directory (an id already stored undoes it and
  is refused), then one ``submit`` script per partition, then ``link`` scripts
  that register cross-partition dependency edges (each returning the
  dependency's state at that instant, so a dependency that finished meanwhile
  is not missed). Invalid input writes nothing. A process that dies mid-submit
  (never acknowledged) may leave a part of a multi-partition batch stored;
  submitting it again with idempotency keys completes it.
* *Task id -> partition*: the directory (hash buckets in their own slots), read
  through an in-process cache (a task never changes partition).
* *Workers and groups*: a registry in its own slot, updated by ``register``
  (also returning the group's members, from which every process computes the
  same rendezvous ownership, ``scheduler.assign_partitions``).
* *Claims across partitions*: a claim first peeks at every partition (one
  round trip), merges the heads of the worker's own partitions in claim order,
  then claims from each chosen partition (a second round trip); each partition's
  claim is atomic, the order across partitions is that of the peek. Stealing
  uses the peeked depths (``scheduler.steal_order``).
* *Statistics* add up per-partition counters; a snapshot, not one instant.

* *Redrive* reads the dependencies' states, redrives, reads them again and
  records a release or failure for any that ended meanwhile in the outbox
  before applying it, so a process that dies there leaves it to the sweeper.

**Sweeping** is safe in many processes at once: ``sweep_scan`` reads the
expired leases, the caller draws the retry delays (its retry policy), and
``sweep`` re-checks each task (state, fence, lease) before changing it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType
from typing import Any

import orjson

from northpole.core.errors import InvalidInput, NorthpoleError, Unavailable
from northpole.core.logging import get_logger
from northpole.tasks import redis_claim, redis_report, redis_submit, redis_sweep, transitions
from northpole.tasks.model import FAILED_ENDS, Reason, Task, TaskEvent, TaskState
from northpole.tasks.redis_batch import Coalescer
from northpole.tasks.redis_codec import (
    completed_events,
    events_from_reply,
    task_from_flat,
    task_from_hash,
)
from northpole.tasks.redis_follow import FollowUp, apply_all, follow_items, record
from northpole.tasks.redis_keys import Keys
from northpole.tasks.redis_report import DURATION_WINDOW
from northpole.tasks.redis_scripts import Call, Client, ScriptRunner, connect
from northpole.tasks.redis_wake import WorkSignal
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.store import (
    Claim,
    CompleteOutcome,
    CompleteRequest,
    Heartbeat,
    HeartbeatAnswer,
    QueueStats,
    TaskNotFound,
    WorkerInfo,
)

_log = get_logger(__name__)
S = TaskState
#: A completion on its way to a ``complete`` script: (partition, task id, worker, fence,
#: result).
_Done = tuple[int, int, str, int, str | None]
#: How long a worker's claims answer empty without asking Redis after one came back short
#: while no wake-up was heard (see :meth:`RedisTaskStore.claim`).
RECHECK_S = 0.25
#: Workers the per-worker claim memories below hold at most (then they start over).
_WORKERS_REMEMBERED = 10_000
#: How often one worker's claims look at other workers' partitions to steal from them.
STEAL_EVERY_S = 0.1
#: How often one worker's claims register it (record it seen, read its group's members).
REGISTER_EVERY_S = 1.0


class RedisTaskStore:
    """The :class:`~northpole.tasks.store.TaskStore` on Redis (see the module docstring).

    Args:
        url_or_client: A Redis URL (:func:`northpole.tasks.redis_scripts.connect`) or a
            client (then the caller closes it).
        partitions: How many partitions the group's workers share.
        aging_ms: Waiting time worth one priority level.
        policy: Backoff of retried attempts.
        rng: Randomness for the backoff jitter.
        wait_replicas: Replicas that must acknowledge every write (``WAIT``); 0: none.
        wait_timeout_ms: How long a write waits for them.
        namespace: Prefix of every key.
        outbox_grace_ms: Age after which the sweeper applies a cross-partition follow-up
            that its writer did not finish.
        location_cache: Task ids whose partition is remembered in-process.
        steal_every_s: How often one worker's claims look at other workers' partitions
            to steal from them (0: at every claim; see :mod:`northpole.tasks.redis_claim`).
    """

    def __init__(
        self,
        url_or_client: str | Client,
        *,
        partitions: int,
        aging_ms: int,
        policy: RetryPolicy,
        rng: random.Random | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
        namespace: str = "np",
        outbox_grace_ms: int = 5_000,
        location_cache: int = 200_000,
        steal_every_s: float = STEAL_EVERY_S,
    ) -> None:
        if partitions < 1:
            raise InvalidInput("must be >= 1", field="partitions")
        if wait_replicas < 0:
            raise InvalidInput("must be >= 0", field="wait_replicas")
        self.partitions = partitions
        self.aging_ms = aging_ms
        self.policy = policy
        self.keys = Keys(namespace)
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        self._source = url_or_client
        self._wait = (wait_replicas, wait_timeout_ms)
        self._grace_ms = outbox_grace_ms
        self._cache_size = location_cache
        self._where: dict[int, int] = {}
        #: The members of each group at its last register (claims peek at what they own).
        self.group_members: dict[str, tuple[str, ...]] = {}
        self._runner: ScriptRunner | None = None
        self._others: list[Any] = []
        self._owns_client = isinstance(url_or_client, str)
        self._closed = False
        self._completer: Coalescer[tuple[int, _Done]] = Coalescer(self._coalesced)
        self._submitter: Coalescer[redis_submit.Submit] = Coalescer(
            lambda calls: redis_submit.submit_merged(self, calls)
        )
        self._signal: WorkSignal | None = None
        #: worker -> (monotonic s of its last full claim that came back short, wake-up
        #: count and counts per partition before its last claim) while it is idle.
        self._idle: dict[str, tuple[float, int, tuple[int, ...]]] = {}
        #: worker -> monotonic s of its last claim that looked at every partition.
        self._looked: dict[str, float] = {}
        self._steal_every_s = steal_every_s
        #: worker -> monotonic s of its last claim that registered it.
        self._registered: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> RedisTaskStore:
        """Connect, check the server answers and load the scripts; return the store itself."""
        if self._closed:
            raise Unavailable("task store is closed")
        if self._runner is None:
            client, self._others = (
                connect(self._source) if isinstance(self._source, str) else (self._source, [])
            )
            runner = ScriptRunner(
                client, wait_replicas=self._wait[0], wait_timeout_ms=self._wait[1]
            )
            try:
                await runner.load()
            except BaseException:
                await runner.close(client=self._owns_client, others=self._others)
                raise
            self._runner = runner
        return self

    async def close(self) -> None:
        """Finish coalesced calls, then close the connection (if the store opened it)."""
        self._closed = True
        await self._completer.drain()
        await self._submitter.drain()
        signal, self._signal = self._signal, None
        if signal is not None:
            await signal.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.close(client=self._owns_client, others=self._others)

    async def __aenter__(self) -> RedisTaskStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def runner(self) -> ScriptRunner:
        """The script runner; raises Unavailable outside the lifecycle."""
        if self._runner is None:
            state = "closed" if self._closed else "not open (use `async with` or `open()`)"
            raise Unavailable(f"task store is {state}")
        return self._runner

    def call(self, script: str, partition: int, now_ms: int, *args: str | int) -> Call:
        """A call of a partition script (``KEYS[1]`` the partition, ``ARGV`` partition, now,
        ``args``)."""
        return Call(script, (self.keys.partition(partition),), (partition, now_ms, *args))

    # -- locating tasks ---------------------------------------------------------------------

    def remember(self, task_id: int, partition: int) -> None:
        """Cache where a task lives (a task never changes partition)."""
        if len(self._where) >= self._cache_size:
            self._where.clear()
        self._where[task_id] = partition

    async def locate(self, ids: Iterable[int]) -> dict[int, int]:
        """Return the partition of each id that the directory knows."""
        found: dict[int, int] = {}
        unknown = []
        for task_id in dict.fromkeys(ids):
            partition = self._where.get(task_id)
            if partition is None:
                unknown.append(task_id)
            else:
                found[task_id] = partition
        if unknown:
            buckets: dict[str, list[int]] = {}
            for task_id in unknown:
                buckets.setdefault(self.keys.directory(task_id), []).append(task_id)
            replies = await self.runner.commands(
                [("HMGET", key, *ids) for key, ids in buckets.items()]
            )
            for ids, reply in zip(buckets.values(), replies, strict=True):
                for task_id, partition in zip(ids, reply, strict=True):
                    if partition is not None:
                        found[task_id] = int(partition)
                        self.remember(task_id, int(partition))
        return found

    async def _partition_of(self, task_id: int) -> int:
        where = await self.locate([task_id])
        if task_id not in where:
            raise TaskNotFound(task_id)
        return where[task_id]

    async def load_many(self, ids: Iterable[int]) -> dict[int, Task]:
        """Return the stored tasks among ``ids``, by id."""
        where = await self.locate(ids)
        order = list(where)
        replies = await self.runner.commands(
            [("HGETALL", self.keys.task(where[i], i)) for i in order]
        )
        return {i: task_from_hash(r) for i, r in zip(order, replies, strict=True) if r}

    # -- the port ---------------------------------------------------------------------------

    async def get(self, task_id: int) -> Task:
        """Return a task; raise :class:`TaskNotFound`."""
        found = await self.load_many([task_id])
        if task_id not in found:
            raise TaskNotFound(task_id)
        return found[task_id]

    async def submit(
        self, tasks: Sequence[Task], *, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        """Store new PENDING tasks (all or none); return them (or the idempotent twins).

        Small batches submitted concurrently share round trips (see
        :func:`northpole.tasks.redis_submit.submit_merged`); each caller still gets
        its own tasks, events and errors.
        """
        batch = list(tasks)
        if len(batch) > redis_submit.MERGE_MAX:
            return await redis_submit.submit(self, batch, now_ms)
        answer = await self._submitter.submit((batch, now_ms))
        if isinstance(answer, NorthpoleError):
            raise answer
        result: tuple[list[Task], list[TaskEvent]] = answer
        return result

    async def claim(self, claim: Claim, *, now_ms: int) -> tuple[list[Task], list[TaskEvent]]:
        """Assign up to ``claim.limit`` claimable tasks to the worker (PENDING -> ASSIGNED).

        A claim that came back short found every queue it could take from empty. For
        :data:`RECHECK_S` after such a claim, while the wake-up listener stays
        subscribed, the worker is idle: every script that makes a task claimable
        publishes a wake-up naming its partition, so its next claims only need the
        partitions it owns that were woken since. None: it answers empty without
        asking Redis. Some: it claims from those at once, the limit split evenly,
        without peeking first (one round trip instead of two). A backoff that ends is
        announced by nobody, so at least every ``RECHECK_S`` a claim takes the full
        path (peeks, stealing, registering), as the task service re-checks.
        """
        signal = self._signal
        if signal is None or not signal.listening or claim.limit <= 0:
            return await redis_claim.claim(self, claim, now_ms)
        count, counts = signal.count, signal.counts()
        idle = self._idle.get(claim.worker_id)
        own = redis_claim.owned(self, claim.group, claim.worker_id)
        if idle is not None and own and time.monotonic() - idle[0] < RECHECK_S:
            woken = [p for p in own if counts[p] != idle[2][p]]
            if count == idle[1] or not woken:
                self._idle[claim.worker_id] = (idle[0], count, counts)
                return [], []
            tasks, events = await redis_claim.claim_from(self, claim, woken, now_ms)
            if len(tasks) < claim.limit:
                self._idle[claim.worker_id] = (idle[0], count, counts)
            else:
                self._idle.pop(claim.worker_id, None)
            return tasks, events
        tasks, events = await redis_claim.claim(self, claim, now_ms)
        if len(tasks) < claim.limit:
            if len(self._idle) >= _WORKERS_REMEMBERED:
                self._idle.clear()
            self._idle[claim.worker_id] = (time.monotonic(), count, counts)
        else:
            self._idle.pop(claim.worker_id, None)
        return tasks, events

    def steal_due(self, worker_id: str) -> bool:
        """Whether this claim of ``worker_id`` should look at every partition (to steal
        from other workers'), which it does at most every ``steal_every_s``."""
        return _due(self._looked, worker_id, self._steal_every_s)

    def register_due(self, worker_id: str) -> bool:
        """Whether this claim of ``worker_id`` should register it, which it does at most
        every :data:`REGISTER_EVERY_S` (well within ``worker_ttl_ms``)."""
        return _due(self._registered, worker_id, REGISTER_EVERY_S)

    async def heartbeat(self, beat: Heartbeat, *, now_ms: int) -> HeartbeatAnswer:
        """Record the worker alive, mark ``started`` tasks IN_PROGRESS, extend its leases.

        Only the leases of tasks listed in ``holding`` (or ``started``) are extended.
        """
        return await redis_claim.heartbeat(self, beat, now_ms)

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None, now_ms: int
    ) -> list[TaskEvent]:
        """Record success (releases dependents); concurrent calls share round trips."""
        partition = await self._partition_of(task_id)
        outcome = await self._completer.submit(
            (now_ms, (partition, task_id, worker_id, fence, result))
        )
        if isinstance(outcome, BaseException):
            raise outcome
        events: list[TaskEvent] = outcome
        return events

    async def complete_many(
        self, items: Sequence[CompleteRequest], *, now_ms: int
    ) -> list[CompleteOutcome]:
        """Record many successes in one script per partition; per item, events or error."""
        where = await self.locate(i.task_id for i in items)
        located = [k for k, item in enumerate(items) if item.task_id in where]
        out: list[CompleteOutcome] = (
            [[] for _ in items]
            if len(located) == len(items)
            else [TaskNotFound(i.task_id) for i in items]
        )
        done: list[_Done] = [
            (where[i.task_id], i.task_id, i.worker_id, i.fence, i.result)
            for i in (items[k] for k in located)
        ]
        for k, outcome in zip(located, await self._complete_batch(done, now_ms), strict=True):
            out[k] = outcome
        return out

    async def _coalesced(self, items: Sequence[tuple[int, _Done]]) -> list[CompleteOutcome]:
        """Run coalesced :meth:`complete` calls, grouped by their ``now_ms``."""
        out: list[CompleteOutcome] = [[] for _ in items]
        by_now: dict[int, list[int]] = {}
        for k, (now_ms, _) in enumerate(items):
            by_now.setdefault(now_ms, []).append(k)
        for now_ms, indexes in by_now.items():
            outcomes = await self._complete_batch([items[k][1] for k in indexes], now_ms)
            for k, outcome in zip(indexes, outcomes, strict=True):
                out[k] = outcome
        return out

    async def _complete_batch(self, items: Sequence[_Done], now_ms: int) -> list[CompleteOutcome]:
        """One ``complete`` script per partition for ``items``; then their follow-ups."""
        groups: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item[0], []).append(index)
        calls = []
        for partition, indexes in groups.items():
            payload = [
                (str(items[i][1]), items[i][2], str(items[i][3]), items[i][4]) for i in indexes
            ]
            calls.append(
                self.call(
                    "complete", partition, now_ms, DURATION_WINDOW, orjson.dumps(payload).decode()
                )
            )
        replies = await self.runner.run(calls) if calls else []
        out: list[CompleteOutcome] = [[] for _ in items]
        follow: list[FollowUp] = []
        for (partition, indexes), (results, owed) in zip(groups.items(), replies, strict=True):
            for i, result in zip(indexes, results, strict=True):
                _, task_id, worker_id, fence, _ = items[i]
                code = result[0]
                if code == "ok":
                    out[i] = completed_events(task_id, result, now_ms)
                elif code == "missing":
                    out[i] = TaskNotFound(task_id)
                else:
                    out[i] = transitions.StaleFence(task_from_flat(result[1]), worker_id, fence)
            follow += follow_items(partition, owed)
        if follow:
            await self.follow(follow, now_ms)
        return out

    async def fail(
        self,
        task_id: int,
        *,
        worker_id: str,
        fence: int,
        reason: Reason,
        message: str,
        retry: bool,
        delay_ms: int | None,
        now_ms: int,
    ) -> list[TaskEvent]:
        """Record a failed attempt: retried after ``delay_ms`` (or the policy's backoff) if
        ``retry`` and retries are left, else FAILED (cascading to dependents)."""
        partition = await self._partition_of(task_id)
        backoff: int | None = None
        if retry:
            if delay_ms is None:
                task = await self.get(task_id)
                transitions.check_holder(task, worker_id, fence)
                backoff = self.backoff(task.retry_count)
            else:
                backoff = delay_ms
        [reply] = await self.runner.run(
            [
                self.call(
                    "fail",
                    partition,
                    now_ms,
                    self.aging_ms,
                    task_id,
                    worker_id,
                    fence,
                    reason.value,
                    message,
                    "" if backoff is None else backoff,
                )
            ]
        )
        code, flat, events, owed = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "stale":
            raise transitions.StaleFence(task_from_flat(flat), worker_id, fence)
        out = events_from_reply(events)
        return out + await self.follow(follow_items(partition, owed), now_ms)

    async def cancel(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Fail a PENDING or running task with reason ``cancelled`` (cascading)."""
        partition = await self._partition_of(task_id)
        [reply] = await self.runner.run([self.call("cancel", partition, now_ms, task_id)])
        code, flat, events, owed = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "illegal":
            raise transitions.IllegalTransition(task_from_flat(flat), "fail")
        out = events_from_reply(events)
        return out + await self.follow(follow_items(partition, owed), now_ms)

    async def redrive(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Put a FAILED task back to PENDING with a fresh retry budget.

        Its dependents failed by the cascade stay FAILED; one of its dependencies
        still FAILED or EXPIRED fails it again at once (``dependency_failed``).
        """
        task = await self.get(task_id)
        if task.state is not S.FAILED:
            raise transitions.IllegalTransition(task, "redrive")
        deps = await self.load_many(task.dependencies)
        failed = next((d for d in task.dependencies if deps[d].state in FAILED_ENDS), None)
        waiting = [d for d in dict.fromkeys(task.dependencies) if deps[d].state is not S.COMPLETED]
        [reply] = await self.runner.run(
            [
                self.call(
                    "redrive",
                    task.partition,
                    now_ms,
                    self.aging_ms,
                    task_id,
                    "" if failed is None else failed,
                    len(waiting),
                    *waiting,
                )
            ]
        )
        code, flat, events = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "illegal":
            raise transitions.IllegalTransition(task_from_flat(flat), "redrive")
        out = events_from_reply(events)
        if failed is None and waiting:
            # A dependency may have ended between our read and the redrive: look again, and
            # record what is owed in the outbox first, so a process that dies before applying
            # it leaves it to the sweeper (the dependency's own script no longer will).
            again = await self.load_many(waiting)
            follow: list[FollowUp] = [
                (
                    task.partition,
                    "r" if t.state is S.COMPLETED else "f",
                    task.partition,
                    str(task_id),
                    str(d),
                )
                for d, t in again.items()
                if t.state is S.COMPLETED or t.state in FAILED_ENDS
            ]
            if follow:
                await record(self.runner, self.keys, follow, now_ms)
                out += await self.follow(follow, now_ms)
        return out

    async def sweep(self, *, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        """Reclaim expired leases, apply deadlines, forget workers silent for ``worker_ttl_ms``."""
        return await redis_sweep.sweep(
            self, now_ms=now_ms, worker_ttl_ms=worker_ttl_ms, grace_ms=self._grace_ms
        )

    async def wait_for_work(
        self, after: int, timeout_s: float, partitions: Collection[int] | None = None
    ) -> int:
        """Wait for a wake-up published by a script on ``partitions`` (``None``: any)
        (:mod:`northpole.tasks.redis_wake`)."""
        if self._signal is None:
            self._signal = WorkSignal(self.runner.client, self.keys, self.partitions)
        return await self._signal.wait(after, timeout_s, partitions)

    async def stats(self, *, now_ms: int) -> QueueStats:
        """Return depths, oldest pending times and recent processing times."""
        return await redis_report.stats(self)

    async def workers(self, *, now_ms: int) -> list[WorkerInfo]:
        """Return the workers seen and not yet forgotten."""
        return await redis_report.workers(self)

    # -- follow-ups -------------------------------------------------------------------------

    async def follow(
        self, items: Sequence[FollowUp], now_ms: int, *, outbox: bool = True
    ) -> list[TaskEvent]:
        """Apply cross-partition follow-ups (and those they cause); return the events.

        Args:
            items: The follow-ups.
            now_ms: Current time.
            outbox: Whether the items were recorded in their source's outbox (then they
                are removed from it once applied).
        """
        events: list[TaskEvent] = []
        if not items:
            return events
        try:
            await apply_all(self.runner, self.keys, items, now_ms, outbox=outbox, events=events)
        except Unavailable as exc:
            # Recorded in the outboxes: the sweeper applies them after outbox_grace_ms.
            _log.warning("cross-partition follow-ups left to the sweeper", error=str(exc))
        return events

    def backoff(self, retry_count: int) -> int:
        """The retry delay (ms) of a task that failed ``retry_count`` retried attempts so far."""
        return self.policy.delay_ms(retry_count + 1, self._rng)


def _due(last_times: dict[str, float], worker_id: str, every_s: float) -> bool:
    """Whether ``every_s`` passed since ``last_times[worker_id]``; if so, record now."""
    now = time.monotonic()
    last = last_times.get(worker_id)
    if last is not None and now - last < every_s:
        return False
    if len(last_times) >= _WORKERS_REMEMBERED:
        last_times.clear()
    last_times[worker_id] = now
    return True
