"""The Lua scripts of the Redis task store, loaded once, run in pipelines; and connecting.

Each script lives in ``tasks/lua/<name>.lua`` with a header documenting its
keys, arguments and reply. Partition scripts get ``lua/_lib.lua`` (the shared
helpers) prepended. A script runs by ``EVALSHA``; a node that does not know it
(a fresh server, a replica promoted by failover, ``SCRIPT FLUSH``) answers
``NOSCRIPT``, and the runner loads it (``SCRIPT LOAD``, on every primary of a
cluster) and runs the affected calls again, as redis-py's ``register_script``
does, but for whole pipelines on single servers and clusters alike.

**Connecting** (:func:`connect`) takes one URL:

* ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix://``): one server.
* ``redis+cluster://host:port[,host:port...]``: a Redis Cluster (any nodes to start from).
* ``redis+sentinel://host:port[,host:port...]/<service>[/db]``: the primary that
  Sentinel names for ``<service>``, followed through failovers.

**Replication** (``wait_replicas``): a pipeline that writes ends with
``WAIT <replicas> <timeout>`` on the same connection, so it returns only once
that many replicas have the writes; if fewer acknowledge within the timeout the
call raises :class:`~northpole.core.errors.Unavailable` (the writes happened on
the primary, but are not known to survive its loss). In a cluster each primary
gets its own pipeline, each ending with its own ``WAIT``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AskError, NoScriptError, RedisClusterException, RedisError

from northpole.core.errors import ConfigurationError, NorthpoleError, Unavailable

#: The client types the store works with.
Client = Redis | RedisCluster

#: Scripts that run on a partition's slot and get the shared helpers.
PARTITION_SCRIPTS = (
    "apply",
    "cancel",
    "claim",
    "complete",
    "fail",
    "heartbeat",
    "link",
    "peek",
    "redrive",
    "submit",
    "sweep",
    "sweep_scan",
)
#: Scripts of the worker registry and idempotency slots (no helpers).
PLAIN_SCRIPTS = ("forget", "idempotency", "locate", "register")
#: Errors of the driver that mean "Redis is not reachable or not able to answer".
DRIVER_ERRORS = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name, full source and SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("northpole.tasks").joinpath("lua", f"{name}.lua").read_text("utf-8")


def load_scripts() -> dict[str, Script]:
    """Read every script from the package (partition scripts with ``_lib.lua`` first)."""
    lib = _read("_lib")
    scripts: dict[str, Script] = {}
    for name in (*PARTITION_SCRIPTS, *PLAIN_SCRIPTS):
        source = _read(name)
        if name in PARTITION_SCRIPTS:
            source = f"{lib}\n{source}"
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        scripts[name] = Script(name, source, sha)
    return scripts


@dataclass(frozen=True, slots=True)
class Call:
    """One script call: which script, its keys and its arguments."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


class ScriptError(NorthpoleError):
    """A script failed inside Redis (a bug, or a server without Lua): not retried."""

    code = "script_error"


def connect(url: str) -> tuple[Client, list[Redis]]:
    """Return a client for ``url`` (see the module docstring); nothing is sent yet.

    Returns:
        The client, and the Sentinel clients behind it (to close with it).

    Raises:
        ConfigurationError: The URL is not one of the supported forms.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, decode_responses=True), []
    hosts = [_host_port(item) for item in (parts.netloc.rsplit("@", 1)[-1]).split(",") if item]
    password = unquote(parts.password) if parts.password else None
    if not hosts:
        raise ConfigurationError(f"no host in Redis URL {url!r}", field="redis_url")
    if scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in hosts]
        return RedisCluster(startup_nodes=nodes, decode_responses=True, password=password), []
    if scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigurationError(
                f"Redis URL {url!r} names no Sentinel service (…/<service>)", field="redis_url"
            )
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, decode_responses=True)  # type: ignore[no-untyped-call]
        primary: Redis = sentinel.master_for(
            path[0], db=db, password=password, decode_responses=True
        )
        return primary, list(sentinel.sentinels)
    raise ConfigurationError(
        f"unsupported Redis URL scheme {parts.scheme!r} (redis, rediss, unix, "
        "redis+cluster, redis+sentinel)",
        field="redis_url",
    )


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"bad Redis host:port {item!r}", field="redis_url")
    return host.strip("[]"), int(port)


class ScriptRunner:
    """Runs batches of script calls and commands, one pipeline per node per round trip.

    On a single server (or Sentinel's primary) a batch is one pipeline. In a
    cluster the batch is split by the node serving each key and each node gets
    its own pipeline on a connection of its own, all at once (redis-py's cluster
    pipeline refuses ``EVALSHA``); a ``MOVED`` or ``ASK`` answer refreshes the
    slot map and sends those calls again.

    Args:
        client: A single-server (or Sentinel) client or a cluster client.
        wait_replicas: Replicas that must acknowledge writes (0: do not wait).
        wait_timeout_ms: How long to wait for them.
        max_in_flight: Pipelines in flight at once (each holds a connection); more wait.
    """

    def __init__(
        self,
        client: Client,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        max_in_flight: int = 64,
    ):
        self.client = client
        self.scripts = load_scripts()
        self._by_sha = {s.sha: s for s in self.scripts.values()}
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._slots = asyncio.Semaphore(max_in_flight)
        self._nodes: dict[str, Redis] = {}

    @property
    def cluster(self) -> bool:
        """Whether the client talks to a Redis Cluster."""
        return isinstance(self.client, RedisCluster)

    async def load(self) -> None:
        """Connect and load every script (on every primary of a cluster)."""
        try:
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()
            for script in self.scripts.values():
                await self.client.script_load(script.source)
        except DRIVER_ERRORS as exc:
            raise Unavailable(f"Redis is unavailable: {exc}") from exc

    async def close(self, *, client: bool, others: Sequence[Redis] = ()) -> None:
        """Close the per-node connections of a cluster, the client if ``client``, and
        ``others`` (Sentinel clients)."""
        nodes, self._nodes = self._nodes, {}
        for node in (*nodes.values(), *others):
            await node.aclose()
        if client:
            await self.client.aclose()

    async def run(self, calls: Sequence[Call], *, write: bool = True) -> list[Any]:
        """Run ``calls`` in one round trip and return their replies, in order.

        Args:
            calls: The script calls.
            write: Whether they may write (then ``wait_replicas`` applies).

        Raises:
            Unavailable: Redis could not be reached, or too few replicas acknowledged.
            ScriptError: A script raised an error inside Redis.
        """
        commands = [
            ("EVALSHA", self.scripts[c.script].sha, len(c.keys), *c.keys, *c.args) for c in calls
        ]
        return await self._execute(commands, [c.keys[0] for c in calls], write=write)

    async def commands(
        self, commands: Sequence[tuple[Any, ...]], *, write: bool = False
    ) -> list[Any]:
        """Run plain commands (``("HGETALL", key)`` ...) in one round trip; return the replies.

        Every command's first argument must be its (only, or first) key.
        """
        return await self._execute(list(commands), [c[1] for c in commands], write=write)

    async def _execute(
        self, commands: list[tuple[Any, ...]], keys: list[str], *, write: bool
    ) -> list[Any]:
        if not commands:
            return []
        wait = write and self.wait_replicas > 0
        try:
            if isinstance(self.client, RedisCluster):
                replies = await self._per_node(self.client, commands, keys, wait=wait)
            else:
                replies = await self._pipeline(self.client, commands, wait=wait)
        except DRIVER_ERRORS as exc:
            raise Unavailable(f"Redis is unavailable: {exc}") from exc
        for reply in replies:
            if isinstance(reply, BaseException):
                _raise(reply)
        return replies

    async def _pipeline(
        self, client: Redis, commands: Sequence[tuple[Any, ...]], *, wait: bool
    ) -> list[Any]:
        """One pipeline on one connection (loading scripts a NOSCRIPT asks for, once)."""
        replies = await self._send(client, commands, wait=wait)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            for sha in {commands[i][1] for i in missing}:
                await client.script_load(self._by_sha[sha].source)
            again = await self._send(client, [commands[i] for i in missing], wait=wait)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _send(
        self, client: Redis, commands: Sequence[tuple[Any, ...]], *, wait: bool
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        if wait:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        async with self._slots:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if wait:
            self._check_wait(replies.pop())
        return replies

    async def _per_node(
        self,
        cluster: RedisCluster,
        commands: list[tuple[Any, ...]],
        keys: list[str],
        *,
        wait: bool,
    ) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            by_node: dict[str, list[int]] = {}
            hosts: dict[str, tuple[str, int]] = {}
            for i in todo:
                node = cluster.get_node_from_key(keys[i])
                if node is None:
                    raise Unavailable(f"no cluster node serves key {keys[i]!r}")
                by_node.setdefault(node.name, []).append(i)
                hosts[node.name] = (node.host, int(node.port))

            answers = await asyncio.gather(
                *(
                    self._on_node(name, hosts[name], [commands[i] for i in picked], wait=wait)
                    for name, picked in by_node.items()
                )
            )
            for picked, got in zip(by_node.values(), answers, strict=True):
                for i, reply in zip(picked, got, strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], AskError)]
            if not todo or attempt:
                break
            await cluster.nodes_manager.initialize()
        return replies

    async def _on_node(
        self,
        name: str,
        host: tuple[str, int],
        commands: list[tuple[Any, ...]],
        *,
        wait: bool,
    ) -> list[Any]:
        client = self._nodes.get(name)
        if client is None:
            client = Redis(host=host[0], port=host[1], decode_responses=True)
            self._nodes[name] = client
        return await self._pipeline(client, commands, wait=wait)

    def _check_wait(self, acked: Any) -> None:
        if isinstance(acked, BaseException):
            _raise(acked)
        if int(acked) < self.wait_replicas:
            raise Unavailable(
                f"only {acked} of {self.wait_replicas} replicas acknowledged the write "
                f"within {self.wait_timeout_ms} ms"
            )


def _raise(reply: BaseException) -> None:
    if isinstance(reply, DRIVER_ERRORS) and not _is_script_bug(reply):
        raise Unavailable(f"Redis is unavailable: {reply}") from reply
    raise ScriptError(f"a task store script failed: {reply}") from reply


def _is_script_bug(reply: BaseException) -> bool:
    text = str(reply)
    return "user_script" in text or "Error running script" in text
