"""The asyncio etcd v3 client northpole uses, and the mapping of its errors.

It speaks etcd's gRPC API through the generated stubs that ship with ``aetcd``
over one ``grpc.aio`` channel to every endpoint at once (``pick_first``: when
the member in use dies, the channel moves to the next one). Every request has a
deadline, waits for a connection up to that deadline, and asks for a member
that has a raft leader (``hasleader``), so a member cut off from the quorum
answers ``Unavailable`` instead of stale data or a silent watch.

Errors: every gRPC failure leaves this module as
:class:`~northpole.core.errors.Unavailable` (or :class:`NotFound` for a lease
etcd no longer knows), with the driver's exception chained.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from northpole.coord.keys import prefix_end
from northpole.core.errors import ConfigurationError, NotFound, Unavailable

_METADATA = (("hasleader", "true"),)
_CHANNEL_OPTIONS = (
    ("grpc.lb_policy_name", "pick_first"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys of a range and the store revision they were read at."""

    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one key: ``PUT`` or ``DELETE``."""

    kind: str
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: ``target(key) == value``.

    Build them with the class methods; etcd evaluates them atomically.
    """

    key: bytes
    target: str
    value: int

    @classmethod
    def absent(cls, key: bytes) -> Compare:
        """True when ``key`` does not exist."""
        return cls(key, "create", 0)

    @classmethod
    def created_at(cls, key: bytes, revision: int) -> Compare:
        """True when ``key`` exists and was created at ``revision`` (a fencing check)."""
        return cls(key, "create", revision)

    @classmethod
    def on_lease(cls, key: bytes, lease_id: int) -> Compare:
        """True when ``key`` is attached to ``lease_id``."""
        return cls(key, "lease", lease_id)

    @classmethod
    def modified_at(cls, key: bytes, revision: int) -> Compare:
        """True when ``key`` was last changed at ``revision`` (0: the key is absent)."""
        return cls(key, "mod", revision)

    def message(self) -> Any:
        """Return the gRPC message."""
        if self.target == "create":
            return rpc.Compare(
                key=self.key,
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.CREATE,
                create_revision=self.value,
            )
        if self.target == "mod":
            return rpc.Compare(
                key=self.key,
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.MOD,
                mod_revision=self.value,
            )
        return rpc.Compare(
            key=self.key, result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, lease=self.value
        )


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` at ``key``, attached to ``lease`` (0: no lease)."""

    key: bytes
    value: bytes
    lease: int = 0

    def message(self) -> Any:
        """Return the gRPC request op."""
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=self.key, value=self.value, lease=self.lease)
        )


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``."""

    key: bytes

    def message(self) -> Any:
        """Return the gRPC request op."""
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self.key))


@dataclass(frozen=True, slots=True)
class Get:
    """Read ``key`` (its value comes back in :attr:`TxnResult.ranges`), at ``revision`` (0: now)."""

    key: bytes
    revision: int = 0

    def message(self) -> Any:
        """Return the gRPC request op."""
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=self.key, revision=self.revision))


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the compares held, the revision, and what each ``Get`` found."""

    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]


def grpc_target(endpoints: Sequence[str]) -> str:
    """Turn endpoints (``http://h:p`` or ``h:p``) into one gRPC target of IP literals.

    Host names are resolved now (gRPC has no static multi-host resolver for
    names). One target holds one address family: IPv4 when there is any.

    Raises:
        ConfigurationError: An endpoint without a port, or an unknown host.
    """
    addresses: list[tuple[str, int]] = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
        if parts.hostname is None or parts.port is None:
            raise ConfigurationError(f"etcd endpoint {endpoint!r} needs a host and a port")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigurationError(f"etcd endpoint {endpoint!r}: {exc}") from exc
        for family, _, _, _, sockaddr in infos:
            address = (str(sockaddr[0]), int(sockaddr[1]))
            if family in (socket.AF_INET, socket.AF_INET6) and address not in addresses:
                addresses.append(address)
    v4 = [(host, port) for host, port in addresses if ":" not in host]
    if v4:
        return "ipv4:" + ",".join(f"{host}:{port}" for host, port in v4)
    return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in addresses)


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Re-raise gRPC and timeout failures of ``what`` as northpole errors."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"etcd {what}: {details}") from exc
        raise Unavailable(f"etcd {what} failed: {code.name}: {details}", retry_after_s=1.0) from exc
    except TimeoutError as exc:
        raise Unavailable(f"etcd {what} timed out", retry_after_s=1.0) from exc


def _kv(message: Any) -> KeyValue:
    return KeyValue(
        key=bytes(message.key),
        value=bytes(message.value),
        create_revision=int(message.create_revision),
        mod_revision=int(message.mod_revision),
        lease=int(message.lease),
    )


class EtcdClient:
    """An etcd connection: key-value, transactions, leases and watches.

    Use it as an async context manager, or call :meth:`open` and :meth:`close`.

    Args:
        endpoints: etcd client URLs of one cluster.
        timeout_s: Deadline of each request, including the wait for a connection.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ConfigurationError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None

    async def open(self) -> EtcdClient:
        """Create the channel (connections are made on first use)."""
        if self._channel is None:
            target = await asyncio.to_thread(grpc_target, self.endpoints)
            channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            self._kv = rpc.KVStub(channel)
            self._lease = rpc.LeaseStub(channel)
            self._watch = rpc.WatchStub(channel)
            self._channel = channel
        return self

    async def close(self) -> None:
        """Close the channel; calls still running fail."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> EtcdClient:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _stubs(self) -> None:
        if self._channel is None:
            raise Unavailable("the etcd client is not open")

    async def _unary(self, what: str, method: Any, request: Any) -> Any:
        self._stubs()
        with mapped_errors(what):
            return await method(
                request, timeout=self.timeout_s, metadata=_METADATA, wait_for_ready=True
            )

    # -- key-value --------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        """Return ``key``, or ``None`` when it does not exist."""
        self._stubs()
        response = await self._unary("get", self._kv.Range, rpc.RangeRequest(key=key))
        return _kv(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: bytes, *, keys_only: bool = False) -> RangeResult:
        """Return every key starting with ``prefix``, in key order, and the revision read."""
        self._stubs()
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=keys_only)
        response = await self._unary("range", self._kv.Range, request)
        return RangeResult([_kv(kv) for kv in response.kvs], int(response.header.revision))

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
    ) -> RangeResult:
        """Return the keys in ``[key, range_end)`` (``None``: ``key`` alone), in key order.

        Args:
            key: The first key.
            range_end: The end of the range (exclusive); ``b"\\0"`` with ``key=b"\\0"``
                is every key.
            revision: Read at this store revision (0: the latest).
            limit: At most this many keys (0: all).
        """
        self._stubs()
        request = rpc.RangeRequest(
            key=key, range_end=range_end or b"", revision=revision, limit=limit
        )
        response = await self._unary("range", self._kv.Range, request)
        return RangeResult([_kv(kv) for kv in response.kvs], int(response.header.revision))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` and return the new revision."""
        self._stubs()
        request = rpc.PutRequest(key=key, value=value, lease=lease)
        response = await self._unary("put", self._kv.Put, request)
        return int(response.header.revision)

    async def delete(self, key: bytes) -> bool:
        """Delete ``key``; return whether it existed."""
        self._stubs()
        request = rpc.DeleteRangeRequest(key=key)
        response = await self._unary("delete", self._kv.DeleteRange, request)
        return int(response.deleted) > 0

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Run a transaction: ``success`` if every compare holds, else ``failure``."""
        self._stubs()
        request = rpc.TxnRequest(
            compare=[c.message() for c in compare],
            success=[op.message() for op in success],
            failure=[op.message() for op in failure],
        )
        response = await self._unary("txn", self._kv.Txn, request)
        ranges = [
            [_kv(kv) for kv in item.response_range.kvs]
            for item in response.responses
            if item.WhichOneof("response") == "response_range"
        ]
        return TxnResult(bool(response.succeeded), int(response.header.revision), ranges)

    # -- leases -----------------------------------------------------------

    async def grant(self, ttl_s: int) -> tuple[int, int]:
        """Grant a lease; return ``(lease_id, granted_ttl_s)`` (etcd may raise the TTL)."""
        self._stubs()
        response = await self._unary(
            "lease grant", self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl_s)
        )
        if response.error:
            raise Unavailable(f"etcd lease grant failed: {response.error}")
        return int(response.ID), int(response.TTL)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys; a lease already gone is fine."""
        self._stubs()
        try:
            await self._unary(
                "lease revoke", self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id)
            )
        except NotFound:
            return

    def keepalive(self) -> KeepAlive:
        """Return a keepalive stream (one request in flight at a time)."""
        self._stubs()
        return KeepAlive(self._lease)

    # -- watches ----------------------------------------------------------

    def watch_prefix(self, prefix: bytes, *, start_revision: int = 0) -> Watch:
        """Return a watch on every key under ``prefix`` from ``start_revision`` (0: now on)."""
        self._stubs()
        return Watch(self._watch, prefix, start_revision, self.timeout_s)


class KeepAlive:
    """One ``LeaseKeepAlive`` stream; :meth:`ping` sends one request and reads its answer."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._call: Any = None

    async def ping(self, lease_id: int, *, timeout_s: float) -> int:
        """Refresh ``lease_id``; return the TTL etcd granted (0 or less: the lease is gone).

        On any failure the stream is dropped, so a late answer can never be
        mistaken for the answer to a later request.

        Raises:
            Unavailable: No answer within ``timeout_s``, or the stream failed.
        """
        if self._call is None:
            self._call = self._stub.LeaseKeepAlive(metadata=_METADATA, wait_for_ready=True)
        try:
            with mapped_errors("lease keepalive"):
                await asyncio.wait_for(
                    self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id)), timeout_s
                )
                response = await asyncio.wait_for(self._call.read(), timeout_s)
        except BaseException:
            self.close()
            raise
        if response is grpc.aio.EOF:
            self.close()
            raise Unavailable("etcd closed the lease keepalive stream")
        return int(response.TTL)

    def close(self) -> None:
        """Cancel the stream."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()


class Watch:
    """A watch on a prefix, as an async context manager and async iterator of event batches.

    Entering it waits until etcd confirms the watch, so nothing written after
    ``start_revision`` is missed. Each item is the list of events of one
    response (one revision or more).
    """

    def __init__(self, stub: Any, prefix: bytes, start_revision: int, timeout_s: float) -> None:
        self._stub = stub
        self._prefix = prefix
        self._start = start_revision
        self._timeout_s = timeout_s
        self._call: Any = None

    async def __aenter__(self) -> Watch:
        call = self._stub.Watch(metadata=_METADATA, wait_for_ready=True)
        self._call = call
        create = rpc.WatchCreateRequest(
            key=self._prefix, range_end=prefix_end(self._prefix), start_revision=self._start
        )
        try:
            with mapped_errors("watch"):
                await asyncio.wait_for(
                    call.write(rpc.WatchRequest(create_request=create)), self._timeout_s
                )
                response = await asyncio.wait_for(call.read(), self._timeout_s)
            self._check(response)
        except BaseException:
            call.cancel()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def __aiter__(self) -> AsyncIterator[list[WatchEvent]]:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        if self._call is None:
            raise StopAsyncIteration
        while True:
            with mapped_errors("watch"):
                response = await self._call.read()
            self._check(response)
            if response.events:
                return [
                    WatchEvent("DELETE" if ev.type == rpc.Event.DELETE else "PUT", _kv(ev.kv))
                    for ev in response.events
                ]

    @staticmethod
    def _check(response: Any) -> None:
        if response is grpc.aio.EOF:
            raise Unavailable("etcd closed the watch")
        if response.canceled:
            reason = response.cancel_reason or f"compacted at {response.compact_revision}"
            raise Unavailable(f"etcd cancelled the watch: {reason}")
