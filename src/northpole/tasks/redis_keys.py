"""Every Redis key and record field of the Redis task store, in one place.

**From the design's names to ours.** The design lays the queue out as::

    gift:task:{gift_id}          -> Task protobuf
    queue:{priority}:{partition} -> List of task IDs
    worker:{worker_id}:assigned  -> Set of task IDs

In Redis Cluster those braces are hash tags, so one transition (claim a task,
index it as held by a worker, take it off a queue) would touch keys in three
slots and fail with ``CROSSSLOT``. Here every key a transition touches carries
the hash tag of the task's **partition**, ``{p<N>}``, so a partition lives in
one slot and each transition is one Lua script on one node:

==================================  ==========================================================
design                              here (prefix ``<ns>:{p<N>}:``, N = the task's partition)
==================================  ==========================================================
``gift:task:{gift_id}``             ``t:<task_id>`` HASH, one per task (fields: :data:`FIELDS`)
``queue:{priority}:{partition}``    ``ready:<task_type>`` ZSET, score = sched_key (priority
                                    with aging folded in, ``scheduler.schedule_key``)
``worker:{worker_id}:assigned``     ``holders`` HASH worker -> count held in the partition,
                                    and ``leases`` ZSET task -> lease end
==================================  ==========================================================

A partition (tag ``{p<N>}``) also holds ``delayed`` (PENDING tasks waiting for
their backoff, by ``available_ms``), ``pend:<task_type>`` (every PENDING task,
by ``available_ms``: the oldest-pending statistic), ``deadlines`` (unfinished
tasks with a deadline), ``deps:<task_id>`` (SET of ``"<child>|<partition>"``,
the task's dependents), ``wait:<task_id>`` (SET of dependency ids not yet
COMPLETED), ``depth`` (HASH ``"<state>|<priority>|<task_type>"`` -> count),
``dur`` (HASH: running mean processing time per type and its sample count),
``types`` (SET of task types seen) and ``outbox`` (HASH of cross-partition
follow-ups not yet applied, see :mod:`northpole.tasks.redis_store`). The
partition's scripts publish on the channel ``wake`` when tasks become
claimable (:mod:`northpole.tasks.redis_wake`).

Three things are not per partition, each in a slot of its own:

* ``<ns>:{w}:workers`` HASH worker -> JSON info, ``<ns>:{w}:seen`` ZSET worker ->
  last seen, ``<ns>:{w}:group:<group>`` ZSET of a group's members: the worker
  registry (one script upserts a worker and returns its group).
* ``<ns>:{i}:idem`` HASH idempotency key -> task id (reserved atomically for a
  whole batch by one script).
* ``<ns>:{d<B>}:loc`` HASH task id -> partition, in :data:`DIRECTORY_BUCKETS`
  buckets (``B`` = :func:`directory_bucket` of the id): where to find a task by id
  alone.

Lua scripts get the partition prefix ``<ns>:{p<N>}:`` as ``KEYS[1]`` and build
the keys above from it; every key they touch is in that one slot.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from northpole.core.errors import InvalidInput

#: Buckets of the task id -> partition directory.
DIRECTORY_BUCKETS = 64
#: The low bits of a task id that do not choose its bucket: a Snowflake id's sequence.
_SEQUENCE_BITS = 12
#: Where a Snowflake id's millisecond starts.
_TIMESTAMP_SHIFT = 22


def directory_bucket(task_id: int) -> int:
    """Return the directory bucket of a task id.

    Ids that differ only in their sequence (one generator's ids of one
    millisecond, as a batch gets them) share a bucket, so a batch's entries are
    written by one or two ``locate`` calls, not one per bucket (measured with
    1,000-task batches: Redis 8.2 -> 7.3 us and client 5.2 -> 4.3 us per task).
    The bucket moves on by one every millisecond and differs between
    workshops, so buckets fill evenly over time.
    """
    return ((task_id >> _SEQUENCE_BITS) + (task_id >> _TIMESTAMP_SHIFT)) % DIRECTORY_BUCKETS


#: The task record's hash fields (absent field = None, or for ``n``, ``rc``, ``f``, ``u``
#: and ``a`` their default: :data:`northpole.tasks.redis_codec.DEFAULTED`), in Task field
#: order, then the store's own: ``sk`` sched_key and ``cl`` when the running attempt was
#: claimed.
FIELDS = {
    "id": "i",
    "gift_id": "g",
    "task_type": "y",
    "priority": "p",
    "dependencies": "d",
    "max_retries": "r",
    "deadline_ms": "dl",
    "metadata": "m",
    "idempotency_key": "k",
    "partition": "pa",
    "state": "s",
    "created_ms": "c",
    "updated_ms": "u",
    "available_ms": "a",
    "attempts": "n",
    "retry_count": "rc",
    "worker_id": "w",
    "lease_until_ms": "l",
    "fence": "f",
    "started_ms": "st",
    "finished_ms": "fi",
    "last_error": "e",
    "result": "re",
    "sched_key": "sk",
    "claimed_ms": "cl",
}

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names of one store namespace.

    Args:
        namespace: Prefix of every key (letters, digits, ``_.:-``), so several
            queues can share one Redis.
    """

    namespace: str = "np"

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise InvalidInput(
                "must be 1-64 characters of letters, digits and _.:-", field="namespace"
            )

    def partition(self, partition: int) -> str:
        """Return the prefix of partition ``partition``'s keys (``KEYS[1]`` of its scripts)."""
        return f"{self.namespace}:{{p{partition}}}:"

    def task(self, partition: int, task_id: int) -> str:
        """Return the key of a task's record hash."""
        return f"{self.partition(partition)}t:{task_id}"

    def depth(self, partition: int) -> str:
        """Return the partition's ``state|priority|type -> count`` hash."""
        return f"{self.partition(partition)}depth"

    def durations(self, partition: int) -> str:
        """Return the partition's processing-time hash."""
        return f"{self.partition(partition)}dur"

    def holders(self, partition: int) -> str:
        """Return the partition's ``worker -> tasks held`` hash."""
        return f"{self.partition(partition)}holders"

    def types(self, partition: int) -> str:
        """Return the set of task types seen in the partition."""
        return f"{self.partition(partition)}types"

    def pending(self, partition: int, task_type: str) -> str:
        """Return the partition's PENDING tasks of a type, by ``available_ms``."""
        return f"{self.partition(partition)}pend:{task_type}"

    def wake(self, partition: int) -> str:
        """Return the Pub/Sub channel the partition's scripts publish on when tasks become
        claimable (``redis_wake``)."""
        return f"{self.partition(partition)}wake"

    def outbox(self, partition: int) -> str:
        """Return the partition's hash of cross-partition follow-ups not yet applied."""
        return f"{self.partition(partition)}outbox"

    @property
    def workers_prefix(self) -> str:
        """The prefix of the worker registry's keys (``KEYS[1]`` of its scripts)."""
        return f"{self.namespace}:{{w}}:"

    @property
    def workers(self) -> str:
        """The ``worker -> JSON info`` hash."""
        return f"{self.workers_prefix}workers"

    @property
    def idempotency(self) -> str:
        """The ``idempotency key -> task id`` hash."""
        return f"{self.namespace}:{{i}}:idem"

    def directory(self, task_id: int) -> str:
        """Return the directory bucket hash holding ``task_id -> partition``."""
        return _directory_keys(self.namespace)[directory_bucket(task_id)]


@functools.lru_cache(maxsize=16)
def _directory_keys(namespace: str) -> tuple[str, ...]:
    return tuple(f"{namespace}:{{d{b}}}:loc" for b in range(DIRECTORY_BUCKETS))
