"""Wake-ups for waiting claims: the scripts publish when tasks become claimable.

A script that puts a task into a ready queue (``submit``, a release by
``complete`` or ``apply``, a backoff that ended, a redrive) publishes once per
call on its partition's channel ``<ns>:{p<N>}:wake``
(:meth:`~northpole.tasks.redis_keys.Keys.wake`). :class:`WorkSignal` listens on
every partition's channel (one Pub/Sub connection per store; in a cluster, on
one node, since classic Pub/Sub messages reach every node) and counts the
messages per partition; :meth:`WorkSignal.wait` returns as soon as the count
of the partitions the caller asks about passes the one it saw before its
claim. So a worker waiting for work in another process than the submitter's
claims within a round trip of the submit, instead of at its next poll. A
worker waits on the partitions it owns only: a task in another worker's
partition wakes that worker alone (instead of every worker racing for it,
the losers' claims coming back short after a second round of peeks), and
is stolen by others at their periodic re-check if its owner is too busy.

Pub/Sub is fire-and-forget: a message sent while the listener reconnects is
lost, and the waiter falls back to its timeout (the caller's poll interval).
The signal never makes a claim wrong, only sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from northpole.core.lifecycle import check_cancelled, stop_tasks
from northpole.core.logging import get_logger
from northpole.tasks.redis_keys import Keys
from northpole.tasks.redis_scripts import DRIVER_ERRORS, Client

_log = get_logger(__name__)
#: How long the listener waits before it connects again after an error.
RECONNECT_S = 1.0


class WorkSignal:
    """Counts wake-up messages of a store's partitions; see the module docstring.

    Args:
        client: The store's client (a cluster client listens on one of its nodes).
        keys: The store's key names.
        partitions: How many partitions to listen to.
    """

    def __init__(self, client: Client, keys: Keys, partitions: int) -> None:
        self._client = client
        self._channels = [keys.wake(p) for p in range(partitions)]
        self._count = 0
        self._counts = [0] * partitions
        self._event = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._listening = False
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether the listener is subscribed now (while it is, no wake-up is missed)."""
        return self._listening

    @property
    def count(self) -> int:
        """Wake-ups received so far, of every partition."""
        return self._count

    def counts(self) -> tuple[int, ...]:
        """Wake-ups received so far, per partition."""
        return tuple(self._counts)

    def count_of(self, partitions: Collection[int] | None) -> int:
        """Wake-ups received so far on ``partitions`` (``None``: every partition)."""
        if partitions is None:
            return self._count
        counts = self._counts
        return sum(counts[p] for p in partitions if 0 <= p < len(counts))

    async def wait(
        self, after: int, timeout_s: float, partitions: Collection[int] | None = None
    ) -> int:
        """Wait until the count of ``partitions`` passes ``after`` or ``timeout_s`` passed;
        return that count (``partitions`` None: every partition).

        The first call starts the listener and waits (bounded by ``timeout_s``) until it
        has subscribed, so a caller that reads the count before a claim misses nothing
        published after that read.
        """
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="redis-work-signal")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(timeout_s, 1.0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            now = self.count_of(partitions)
            remaining = deadline - loop.time()
            if after < 0 or now != after or remaining <= 0:
                return now
            event = self._event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    async def close(self) -> None:
        """Stop listening."""
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            await stop_tasks(listener)

    def _fire(self, partition: int | None = None) -> None:
        """Count a wake-up of ``partition`` (``None``: of every partition, as after a
        reconnect, when what was published meanwhile is not known)."""
        self._count += 1
        if partition is None:
            self._counts = [n + 1 for n in self._counts]
        elif 0 <= partition < len(self._counts):
            self._counts[partition] += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _connection(self) -> tuple[Any, Redis | None]:
        """A Pub/Sub object, and the node connection to close with it (cluster only)."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_nodes()[self._count % max(1, len(self._client.get_nodes()))]
            own = Redis(host=node.host, port=int(node.port), decode_responses=True)
            return own.pubsub(), own
        return self._client.pubsub(), None

    async def _listen(self) -> None:
        while True:
            pubsub, own = None, None
            try:
                pubsub, own = self._connection()
                await pubsub.subscribe(*self._channels)
                self._listening = True
                self._ready.set()
                self._fire()  # anything published while (re)connecting is not known: look again
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    check_cancelled()  # a cancel the driver lost (core.lifecycle)
                    if message is not None:
                        self._fire(_partition(message.get("data")))
            except DRIVER_ERRORS as exc:
                check_cancelled()
                self._listening = False
                _log.warning("work signal listener lost its connection", error=str(exc))
                await asyncio.sleep(RECONNECT_S)
            finally:
                self._listening = False
                if pubsub is not None:
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await pubsub.aclose()
                if own is not None:
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await own.aclose()


def _partition(data: object) -> int | None:
    """The partition a wake-up message names (``None`` if it names none we can read)."""
    if not isinstance(data, str | bytes | int):
        return None
    try:
        return int(data)
    except ValueError:
        return None
