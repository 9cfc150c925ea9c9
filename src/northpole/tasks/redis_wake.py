"""Wake-ups for waiting claims: the scripts publish when tasks become claimable.

A script that puts a task into a ready queue (``submit``, a release by
``complete`` or ``apply``, a backoff that ended, a redrive) publishes once per
call on its partition's channel ``<ns>:{p<N>}:wake``
(:meth:`~northpole.tasks.redis_keys.Keys.wake`). :class:`WorkSignal` listens on
every partition's channel (one Pub/Sub connection per store; in a cluster, on
one node, since classic Pub/Sub messages reach every node) and counts the
messages; :meth:`WorkSignal.wait` returns as soon as the count passes the one
the caller saw before its claim. So a worker waiting for work in another
process than the submitter's claims within a round trip of the submit,
instead of at its next poll.

Pub/Sub is fire-and-forget: a message sent while the listener reconnects is
lost, and the waiter falls back to its timeout (the caller's poll interval).
The signal never makes a claim wrong, only sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

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
        self._event = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def count(self) -> int:
        """Wake-ups received so far."""
        return self._count

    async def wait(self, after: int, timeout_s: float) -> int:
        """Wait until the count passes ``after`` or ``timeout_s`` passed; return the count.

        The first call starts the listener and waits (bounded by ``timeout_s``) until it
        has subscribed, so a caller that reads the count before a claim misses nothing
        published after that read.
        """
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="redis-work-signal")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(timeout_s, 1.0))
        if after < 0 or self._count != after or timeout_s <= 0:
            return self._count
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
        return self._count

    async def close(self) -> None:
        """Stop listening."""
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def _fire(self) -> None:
        self._count += 1
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
                self._ready.set()
                self._fire()  # anything published while (re)connecting is not known: look again
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None:
                        self._fire()
            except DRIVER_ERRORS as exc:
                _log.warning("work signal listener lost its connection", error=str(exc))
                await asyncio.sleep(RECONNECT_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await pubsub.aclose()
                if own is not None:
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await own.aclose()
