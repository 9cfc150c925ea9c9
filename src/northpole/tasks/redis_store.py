"""The cluster edition's task store: Redis (one server, Sentinel, or Redis Cluster).

Lifecycle, as :class:`~northpole.tasks.sqlite_store.SqliteTaskStore`::

    async with RedisTaskStore("redis://127.0.0.1:6379/0", partitions=16, aging_ms=1_000,
                              policy=policy) as store:
        tasks, events = await store.submit(batch, now_ms=clock.now_ms())

Key layout: :mod:`northpole.tasks.redis_keys`. Scripts: ``tasks/lua/*.lua``,
run by :mod:`northpole.tasks.redis_scripts`. Records: :mod:`northpole.tasks.redis_codec`.

**What is atomic.** Every transition of tasks of one partition is one Lua
script on the partition's slot: claim, start, complete (with the release of
dependents in the same partition), fail and retry, cancel, redrive, lease
reclaim, deadline expiry, and the cascade of a failure through dependents in
the same partition. Several tasks per call: a claim takes up to ``limit`` tasks
per partition in one script, concurrent :meth:`complete` calls are coalesced
into one script per partition (each keeps its own result), the sweeper handles
a partition in one script.

**What crosses partitions, and how.**

* *Dependencies between partitions.* Completing (or failing) a task whose
  dependent lives in another partition records a follow-up in the partition's
  ``outbox`` in the same script, then applies it with the ``apply`` script on
  the dependent's partition (release, or fail with ``dependency_failed``) and
  removes it. Follow-ups are idempotent; if the process dies in between, the
  sweeper applies every follow-up older than ``outbox_grace_ms``. So a
  dependent is released or failed *at least once, eventually*, not in the same
  instant as its dependency.
* *Submit* reads what it needs (idempotency keys, dependency states, clashing
  ids), validates the whole batch (unknown dependencies, cycles, duplicate ids)
  before writing anything, reserves the batch's idempotency keys in one script
  (all or none), writes the id directory, then one ``submit`` script per
  partition, then ``link`` scripts that register cross-partition dependency
  edges (each returning the dependency's state at that instant, so a
  dependency that finished meanwhile is not missed). Invalid input writes
  nothing. A process that dies mid-submit (never acknowledged) may leave a part
  of a multi-partition batch stored; submitting it again with idempotency keys
  completes it.
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

**Sweeping** is safe in many processes at once: ``sweep_scan`` reads the
expired leases, the caller draws the retry delays (its retry policy), and
``sweep`` re-checks each task (state, fence, lease) before changing it.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import orjson

from northpole.core.errors import Conflict, InvalidInput, Unavailable
from northpole.core.logging import get_logger
from northpole.tasks import transitions
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState
from northpole.tasks.redis_batch import Coalescer
from northpole.tasks.redis_codec import (
    depth_key,
    events_from_reply,
    submitted_event,
    task_fields,
    task_from_flat,
    task_from_hash,
)
from northpole.tasks.redis_keys import Keys
from northpole.tasks.redis_plan import FAILED_ENDS, Peek, doomed, plan_claim, split_twins
from northpole.tasks.redis_scripts import Call, Client, ScriptRunner, connect
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import assign_partitions, find_cycle, schedule_key
from northpole.tasks.store import (
    Claim,
    DependencyCycle,
    DepthRow,
    Heartbeat,
    HeartbeatAnswer,
    QueueStats,
    TaskNotFound,
    UnknownDependency,
    WorkerInfo,
)

_log = get_logger(__name__)
S = TaskState
#: Completions a type's mean processing time is (roughly) taken over.
DURATION_WINDOW = 100
#: Heads a claim looks at per partition at most (more are taken by depth).
_PEEK_MAX = 256
#: Expired leases one sweep handles per partition.
_SWEEP_LEASES = 1_000
#: Rounds a claim makes when concurrent claims took what it peeked.
_CLAIM_ROUNDS = 10
#: Follow-up item: (source partition, kind, target partition, child id, parent id).
FollowUp = tuple[int, str, int, str, str]


@functools.lru_cache(maxsize=64)
def _partition_map(partitions: int, members: tuple[str, ...]) -> dict[str, list[int]]:
    return assign_partitions(partitions, members)


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
        self._runner: ScriptRunner | None = None
        self._others: list[Any] = []
        self._owns_client = isinstance(url_or_client, str)
        self._closed = False
        self._completer = Coalescer(self._complete_batch)

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

    def _call(self, script: str, partition: int, now_ms: int, *args: str | int) -> Call:
        return Call(script, (self.keys.partition(partition),), (partition, now_ms, *args))

    # -- locating tasks ---------------------------------------------------------------------

    def _remember(self, task_id: int, partition: int) -> None:
        if len(self._where) >= self._cache_size:
            self._where.clear()
        self._where[task_id] = partition

    async def _locate(self, ids: Iterable[int]) -> dict[int, int]:
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
                        self._remember(task_id, int(partition))
        return found

    async def _partition_of(self, task_id: int) -> int:
        where = await self._locate([task_id])
        if task_id not in where:
            raise TaskNotFound(task_id)
        return where[task_id]

    async def _load_many(self, ids: Iterable[int]) -> dict[int, Task]:
        where = await self._locate(ids)
        order = list(where)
        replies = await self.runner.commands(
            [("HGETALL", self.keys.task(where[i], i)) for i in order]
        )
        return {i: task_from_hash(r) for i, r in zip(order, replies, strict=True) if r}

    # -- the port ---------------------------------------------------------------------------

    async def get(self, task_id: int) -> Task:
        """Return a task; raise :class:`TaskNotFound`."""
        found = await self._load_many([task_id])
        if task_id not in found:
            raise TaskNotFound(task_id)
        return found[task_id]

    async def submit(
        self, tasks: Sequence[Task], *, now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]]:
        """Store new PENDING tasks (all or none); return them (or the idempotent twins)."""
        batch = list(tasks)
        self._check_batch(batch)
        if not batch:
            return [], []
        for _ in range(5):
            result = await self._submit_once(batch, now_ms)
            if result is not None:
                return result
        raise Unavailable("idempotency keys of the batch kept changing; try again")

    async def claim(self, claim: Claim, *, now_ms: int) -> tuple[list[Task], list[TaskEvent]]:
        """Assign up to ``claim.limit`` claimable tasks to the worker (PENDING -> ASSIGNED)."""
        types = sorted(claim.task_types)
        peek_limit = max(0, min(claim.limit, _PEEK_MAX))
        calls = [self._register(claim.worker_id, claim.group, claim.task_types, None, now_ms)]
        calls += [
            self._call("peek", p, now_ms, peek_limit, len(types), *types)
            for p in range(self.partitions)
        ]
        replies = await self.runner.run(calls)
        own = _partition_map(self.partitions, tuple(replies[0])).get(claim.worker_id, [])
        if claim.limit <= 0:
            return [], []
        peeks = {p: _peek(reply) for p, reply in enumerate(replies[1:])}
        claimed: list[Task] = []
        events: list[TaskEvent] = []
        for _ in range(_CLAIM_ROUNDS):
            plan = plan_claim(peeks, own, claim.limit - len(claimed))
            if not plan:
                break
            _, short = await self._claim_round(
                plan, set(own), claim, types, now_ms, claimed, events
            )
            if len(claimed) >= claim.limit or not short:
                break
            replies = await self.runner.run(
                [self._call("peek", p, now_ms, peek_limit, len(types), *types) for p in peeks]
            )
            peeks = {p: _peek(reply) for p, reply in zip(peeks, replies, strict=True)}
        return claimed, events

    async def _claim_round(
        self,
        plan: list[tuple[int, int]],
        own_parts: set[int],
        claim: Claim,
        types: list[str],
        now_ms: int,
        claimed: list[Task],
        events: list[TaskEvent],
    ) -> tuple[int, bool]:
        """Claim as planned; append tasks (own partitions in claim order, then stolen ones)."""
        calls = [
            self._call("claim", p, now_ms, n, claim.lease_ms, claim.worker_id, len(types), *types)
            for p, n in plan
        ]
        replies = await self.runner.run(calls)
        short = False
        own: list[Task] = []
        stolen: list[Task] = []
        event_of: dict[int, TaskEvent] = {}
        for (partition, n), (records, evs) in zip(plan, replies, strict=True):
            tasks = [task_from_flat(r) for r in records]
            short = short or len(tasks) < n
            for task in tasks:
                self._remember(task.id, partition)
            (own if partition in own_parts else stolen).extend(tasks)
            event_of.update((e.task_id, e) for e in events_from_reply(evs))
        own.sort(key=lambda t: (schedule_key(t.priority, t.available_ms, self.aging_ms), t.id))
        for task in (*own, *stolen):
            claimed.append(task)
            events.append(event_of[task.id])
        return len(own) + len(stolen), short

    async def heartbeat(self, beat: Heartbeat, *, now_ms: int) -> HeartbeatAnswer:
        """Record the worker alive, mark ``started`` tasks IN_PROGRESS, extend its leases.

        Only the leases of tasks listed in ``holding`` (or ``started``) are extended.
        """
        shown = [*beat.holding, *beat.started]
        where = await self._locate(i for i, _ in shown) if shown else {}
        by_partition: dict[int, tuple[list[str], list[str]]] = {}
        for items, slot in ((beat.started, 0), (beat.holding, 1)):
            for task_id, fence in items:
                if task_id in where:
                    pair = by_partition.setdefault(where[task_id], ([], []))
                    pair[slot].extend((str(task_id), str(fence)))
        calls = [
            self._register(beat.worker_id, beat.group, beat.task_types, beat.concurrency, now_ms)
        ]
        parts = sorted(by_partition)
        for p in parts:
            started, holding = by_partition[p]
            calls.append(
                self._call(
                    "heartbeat",
                    p,
                    now_ms,
                    beat.lease_ms,
                    beat.worker_id,
                    len(started) // 2,
                    *started,
                    len(holding) // 2,
                    *holding,
                )
            )
        replies = await self.runner.run(calls)
        own = _partition_map(self.partitions, tuple(replies[0])).get(beat.worker_id, [])
        held: set[int] = set()
        events: list[TaskEvent] = []
        for held_ids, evs in replies[1:]:
            held.update(int(i) for i in held_ids)
            events.extend(events_from_reply(evs))
        cancel = tuple(dict.fromkeys(i for i, _ in beat.holding if i not in held))
        return HeartbeatAnswer(cancel=cancel, partitions=tuple(own), events=events)

    async def complete(
        self, task_id: int, *, worker_id: str, fence: int, result: str | None, now_ms: int
    ) -> list[TaskEvent]:
        """Record success (releases dependents); concurrent calls share round trips."""
        partition = await self._partition_of(task_id)
        code, record, events = await self._completer.submit(
            (partition, now_ms, task_id, worker_id, fence, result)
        )
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "stale":
            raise transitions.StaleFence(task_from_flat(record), worker_id, fence)
        return events_from_reply(events)

    async def _complete_batch(
        self, items: Sequence[tuple[int, int, int, str, int, str | None]]
    ) -> list[Any]:
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (partition, now_ms, *_) in enumerate(items):
            groups.setdefault((partition, now_ms), []).append(index)
        calls = []
        for (partition, now_ms), indexes in groups.items():
            args: list[str | int] = [DURATION_WINDOW, len(indexes)]
            for i in indexes:
                _, _, task_id, worker_id, fence, result = items[i]
                args += [task_id, worker_id, fence, int(result is not None), result or ""]
            calls.append(self._call("complete", partition, now_ms, *args))
        replies = await self.runner.run(calls)
        out: list[Any] = [None] * len(items)
        follow: list[FollowUp] = []
        for ((partition, _), indexes), (results, owed) in zip(groups.items(), replies, strict=True):
            for i, res in zip(indexes, results, strict=True):
                out[i] = res
            follow += _follow_items(partition, owed)
        if follow:
            await self._follow(follow, max(now for _, now, *_ in items))
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
                backoff = self._backoff(task.retry_count)
            else:
                backoff = delay_ms
        [reply] = await self.runner.run(
            [
                self._call(
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
        code, record, events, owed = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "stale":
            raise transitions.StaleFence(task_from_flat(record), worker_id, fence)
        out = events_from_reply(events)
        return out + await self._follow(_follow_items(partition, owed), now_ms)

    async def cancel(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Fail a PENDING or running task with reason ``cancelled`` (cascading)."""
        partition = await self._partition_of(task_id)
        [reply] = await self.runner.run([self._call("cancel", partition, now_ms, task_id)])
        code, record, events, owed = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "illegal":
            raise transitions.IllegalTransition(task_from_flat(record), "fail")
        out = events_from_reply(events)
        return out + await self._follow(_follow_items(partition, owed), now_ms)

    async def redrive(self, task_id: int, *, now_ms: int) -> list[TaskEvent]:
        """Put a FAILED task back to PENDING with a fresh retry budget.

        Its dependents failed by the cascade stay FAILED; one of its dependencies
        still FAILED or EXPIRED fails it again at once (``dependency_failed``).
        """
        task = await self.get(task_id)
        if task.state is not S.FAILED:
            raise transitions.IllegalTransition(task, "redrive")
        deps = await self._load_many(task.dependencies)
        failed = next((d for d in task.dependencies if deps[d].state in FAILED_ENDS), None)
        waiting = [d for d in dict.fromkeys(task.dependencies) if deps[d].state is not S.COMPLETED]
        [reply] = await self.runner.run(
            [
                self._call(
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
        code, record, events = reply
        if code == "missing":
            raise TaskNotFound(task_id)
        if code == "illegal":
            raise transitions.IllegalTransition(task_from_flat(record), "redrive")
        out = events_from_reply(events)
        if failed is None and waiting:
            # A dependency may have ended between our read and the redrive: look again.
            again = await self._load_many(waiting)
            follow = [
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
            out += await self._follow(follow, now_ms, outbox=False)
        return out

    async def sweep(self, *, now_ms: int, worker_ttl_ms: int) -> list[TaskEvent]:
        """Reclaim expired leases, apply deadlines, forget workers silent for ``worker_ttl_ms``."""
        scans = await self.runner.run(
            [
                self._call("sweep_scan", p, now_ms, self._grace_ms, _SWEEP_LEASES)
                for p in range(self.partitions)
            ],
            write=False,
        )
        events: list[TaskEvent] = []
        owed: list[FollowUp] = []
        calls = []
        for partition, (leases, late, due) in enumerate(scans):
            owed += _follow_items(partition, _chunks(late, 4))
            args: list[str | int] = [self.aging_ms, len(leases) // 3]
            for task_id, fence, retry_count in _chunks(leases, 3):
                args += [task_id, fence, self._backoff(int(retry_count))]
            if leases or int(due):
                calls.append(self._call("sweep", partition, now_ms, *args))
        if owed:
            events += await self._follow(owed, now_ms)
        follow: list[FollowUp] = []
        for call, (evs, more) in zip(calls, await self.runner.run(calls), strict=True):
            events += events_from_reply(evs)
            follow += _follow_items(int(call.args[0]), more)
        events += await self._follow(follow, now_ms)
        await self.runner.run(
            [Call("forget", (self.keys.workers_prefix,), (now_ms - worker_ttl_ms,))]
        )
        return events

    async def stats(self, *, now_ms: int) -> QueueStats:
        """Return depths, oldest pending times and recent processing times."""
        k = self.keys
        commands: list[tuple[Any, ...]] = []
        for p in range(self.partitions):
            commands += [
                ("HGETALL", k.depth(p)),
                ("HGETALL", k.durations(p)),
                ("SMEMBERS", k.types(p)),
            ]
        replies = await self.runner.commands(commands)
        depths: list[DepthRow] = []
        means: dict[str, list[tuple[float, int]]] = {}
        oldest_cmds: list[tuple[Any, ...]] = []
        oldest_types: list[str] = []
        for p in range(self.partitions):
            depth, durations, types = replies[3 * p : 3 * p + 3]
            for field, count in depth.items():
                state, priority, task_type = depth_key(field)
                depths.append(DepthRow(task_type, priority, p, state, int(count)))
            for task_type in types:
                if task_type in durations:
                    samples = int(durations.get(f"{task_type}#n", "1"))
                    weight = min(samples, DURATION_WINDOW)
                    means.setdefault(task_type, []).append((float(durations[task_type]), weight))
                oldest_cmds.append(("ZRANGE", k.pending(p, task_type), 0, 0, "WITHSCORES"))
                oldest_types.append(task_type)
        oldest: dict[str, int] = {}
        for task_type, reply in zip(
            oldest_types, await self.runner.commands(oldest_cmds), strict=True
        ):
            if reply:
                score = int(float(reply[0][1]))
                oldest[task_type] = min(oldest.get(task_type, score), score)
        recent = {
            t: sum(m * w for m, w in parts) / sum(w for _, w in parts) / 1000
            for t, parts in sorted(means.items())
        }
        return QueueStats(depths=depths, oldest_pending_ms=oldest, recent_processing_s=recent)

    async def workers(self, *, now_ms: int) -> list[WorkerInfo]:
        """Return the workers seen and not yet forgotten."""
        commands: list[tuple[Any, ...]] = [("HGETALL", self.keys.workers)]
        commands += [("HGETALL", self.keys.holders(p)) for p in range(self.partitions)]
        replies = await self.runner.commands(commands)
        holding: dict[str, int] = {}
        for holders in replies[1:]:
            for worker, count in holders.items():
                holding[worker] = holding.get(worker, 0) + int(count)
        out = []
        for worker, raw in sorted(replies[0].items()):
            info = orjson.loads(raw)
            out.append(
                WorkerInfo(
                    worker_id=worker,
                    group=info["g"],
                    task_types=frozenset(orjson.loads(info["t"])),
                    concurrency=int(info["c"]),
                    first_seen_ms=int(info["f"]),
                    last_seen_ms=int(info["l"]),
                    holding=holding.get(worker, 0),
                )
            )
        return out

    # -- implementation ---------------------------------------------------------------------

    def _backoff(self, retry_count: int) -> int:
        return self.policy.delay_ms(retry_count + 1, self._rng)

    def _register(
        self,
        worker_id: str,
        group: str,
        task_types: frozenset[str],
        concurrency: int | None,
        now_ms: int,
    ) -> Call:
        types = orjson.dumps(sorted(task_types)).decode()
        return Call(
            "register",
            (self.keys.workers_prefix,),
            (now_ms, worker_id, group, types, "" if concurrency is None else concurrency),
        )

    async def _follow(
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
        try:
            await self._follow_all(items, now_ms, outbox, events)
        except Unavailable as exc:
            # Recorded in the outboxes: the sweeper applies them after outbox_grace_ms.
            _log.warning("cross-partition follow-ups left to the sweeper", error=str(exc))
        return events

    async def _follow_all(
        self, items: Sequence[FollowUp], now_ms: int, outbox: bool, events: list[TaskEvent]
    ) -> None:
        while items:
            by_target: dict[int, list[str]] = {}
            for _, kind, target, child, parent in items:
                by_target.setdefault(target, []).extend((kind, child, parent))
            calls = [
                self._call("apply", target, now_ms, len(args) // 3, *args)
                for target, args in sorted(by_target.items())
            ]
            replies = await self.runner.run(calls)
            if outbox:
                await self.runner.commands(
                    [
                        ("HDEL", self.keys.outbox(source), f"{kind}|{target}|{child}|{parent}")
                        for source, kind, target, child, parent in items
                    ],
                    write=True,
                )
            nxt: list[FollowUp] = []
            for call, (evs, more) in zip(calls, replies, strict=True):
                events += events_from_reply(evs)
                nxt += _follow_items(int(call.args[0]), more)
            items, outbox = nxt, True

    def _check_batch(self, batch: Sequence[Task]) -> None:
        ids: set[int] = set()
        for task in batch:
            if task.state is not S.PENDING:
                raise InvalidInput(
                    f"task {task.id} is {task.state.value}, not PENDING", field="state"
                )
            if not 0 <= task.partition < self.partitions:
                raise InvalidInput(
                    f"task {task.id} has partition {task.partition}, not in [0, {self.partitions})",
                    field="partition",
                )
            if task.id in ids:
                raise Conflict(f"task {task.id} appears twice in the batch", field="id")
            ids.add(task.id)

    async def _submit_once(
        self, batch: list[Task], now_ms: int
    ) -> tuple[list[Task], list[TaskEvent]] | None:
        """One attempt at a submit; None if an idempotency key was taken meanwhile."""
        stored_by_key, dangling = await self._stored_keys(batch)
        twins = split_twins(batch, stored_by_key)
        new = twins.new
        if not new:
            return [twins.stored[twins.twin_of[t.id]] for t in batch], []
        new_ids = {t.id for t in new}
        deps = await self._validate(new, new_ids)
        states = {d: t.state for d, t in deps.items()}
        final = {t.id: t for t in new}
        events = [submitted_event(t, now_ms) for t in new]
        for task_id, dependency in doomed(new, new_ids, states):
            failed, event = transitions.fail_final(
                final[task_id],
                reason=Reason.DEPENDENCY_FAILED,
                message=f"dependency {dependency} failed",
                now_ms=now_ms,
            )
            final[task_id] = failed
            events.append(event)
        reserve = [
            str(x)
            for t in new
            if t.idempotency_key is not None
            for x in (t.idempotency_key, t.id, dangling.get(t.idempotency_key, ""))
        ]
        if reserve:
            [taken] = await self.runner.run(
                [Call("idempotency", (self.keys.idempotency,), ("reserve", *reserve))]
            )
            if taken:
                return None
        try:
            events += await self._write_new(list(final.values()), deps, new_ids, now_ms)
        except BaseException:
            if reserve:
                with contextlib.suppress(Unavailable):
                    pairs = [x for i, x in enumerate(reserve) if i % 3 != 2]
                    await self.runner.run(
                        [Call("idempotency", (self.keys.idempotency,), ("release", *pairs))]
                    )
            raise
        stored = await self._load_many(final) if len(events) > len(new) else {}
        out = [
            stored.get(i) or final.get(i) or twins.stored[i]
            for i in (twins.twin_of.get(t.id, t.id) for t in batch)
        ]
        return out, events

    async def _stored_keys(self, batch: list[Task]) -> tuple[dict[str, Task], dict[str, str]]:
        """Return the stored tasks holding the batch's idempotency keys, and keys held by
        ids with no task (left by a submit that died: free to take over)."""
        keys = list(dict.fromkeys(t.idempotency_key for t in batch if t.idempotency_key))
        stored_by_key: dict[str, Task] = {}
        dangling: dict[str, str] = {}
        if keys:
            holders = await self.runner.commands([("HMGET", self.keys.idempotency, *keys)])
            held = {k: int(v) for k, v in zip(keys, holders[0], strict=True) if v is not None}
            found = await self._load_many(held.values())
            for key, task_id in held.items():
                if task_id in found:
                    stored_by_key[key] = found[task_id]
                else:
                    dangling[key] = str(task_id)
        return stored_by_key, dangling

    async def _validate(self, new: list[Task], new_ids: set[int]) -> dict[int, Task]:
        """Check dependencies, cycles and ids of the new tasks; return the stored dependencies."""
        outside = {d for t in new for d in t.dependencies if d not in new_ids}
        deps = await self._load_many(outside) if outside else {}
        for task in new:
            for dependency in task.dependencies:
                if dependency not in new_ids and dependency not in deps:
                    raise UnknownDependency(task.id, dependency)
        cycle = find_cycle({t.id: t.dependencies for t in new if t.dependencies})
        if cycle is not None:
            raise DependencyCycle(cycle)
        clash = await self._load_many(new_ids)
        if clash:
            raise Conflict(f"task {min(clash)} already exists", field="id")
        return deps

    async def _write_new(
        self, tasks: list[Task], deps: dict[int, Task], new_ids: set[int], now_ms: int
    ) -> list[TaskEvent]:
        """Write the directory, then each partition's tasks, then cross-partition edges."""
        part_of = {t.id: t.partition for t in tasks}
        part_of.update({d: t.partition for d, t in deps.items()})
        await self.runner.commands(
            [("HSET", self.keys.directory(t.id), str(t.id), t.partition) for t in tasks],
            write=True,
        )
        for task in tasks:
            self._remember(task.id, task.partition)
        per_partition: dict[int, list[str | int]] = {}
        links: dict[int, list[str | int]] = {}
        for task in tasks:
            fields = task_fields(task, aging_ms=self.aging_ms)
            distinct = list(dict.fromkeys(task.dependencies))
            wait = [
                d
                for d in distinct
                if task.state is S.PENDING and (d in new_ids or deps[d].state is not S.COMPLETED)
            ]
            here = [d for d in distinct if part_of[d] == task.partition]
            args = per_partition.setdefault(task.partition, [])
            args += [task.id, len(fields) // 2, *fields, len(wait), *wait, len(here), *here]
            for d in distinct:
                if part_of[d] != task.partition:
                    links.setdefault(part_of[d], []).extend((d, task.id, task.partition))
        calls = [
            self._call("submit", p, now_ms, sum(1 for t in tasks if t.partition == p), *args)
            for p, args in sorted(per_partition.items())
        ]
        events: list[TaskEvent] = []
        follow: list[FollowUp] = []
        for call, reply in zip(calls, await self.runner.run(calls), strict=True):
            partition = int(call.args[0])
            if reply[0] == "exists":
                raise Conflict(f"task {reply[1]} already exists", field="id")
            events += events_from_reply(reply[1])
            follow += _follow_items(partition, reply[2])
        link_calls = [
            self._call("link", p, now_ms, len(args) // 3, *args)
            for p, args in sorted(links.items())
        ]
        for call, owed in zip(link_calls, await self.runner.run(link_calls), strict=True):
            follow += _follow_items(int(call.args[0]), owed)
        return events + await self._follow(follow, now_ms)


def _peek(reply: list[Any]) -> Peek:
    heads = tuple((int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2))
    return Peek(int(reply[0]), heads)


def _chunks(flat: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    return [tuple(flat[i : i + size]) for i in range(0, len(flat), size)]


def _follow_items(source: int, owed: Iterable[Sequence[Any]]) -> list[FollowUp]:
    return [(source, kind, int(target), child, parent) for kind, target, child, parent in owed]
