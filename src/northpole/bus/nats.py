"""The cluster edition's event stream: NATS JetStream.

One stream (:data:`~northpole.bus.subjects.STREAM`) keeps every subject of
:mod:`northpole.bus.subjects` in file storage. A publish sends each message
with a ``Nats-Msg-Id`` header and returns once the stream acknowledged all of
them; the stream's de-duplication window (default 2 minutes) drops a message
whose id it has seen, which is what makes the outbox relay's retries safe.
Publishes are pipelined: a batch goes out without waiting for each
acknowledgement, and the stream's acknowledgements come back to one reply
subscription that counts them per batch (:class:`AckCounter`), which costs
far less per message than a future and a parsed reply object each.

Payloads of ``compress_min_bytes`` or more travel zstd-compressed, marked by a
``Northpole-Encoding: zstd`` header; consumers get the original bytes back.

Durable consumers are JetStream pull consumers with explicit acks, filtered
by subject; an unacknowledged message comes back after ``ack_wait_s``.

NATS errors never leave this module bare: they become
:class:`~northpole.core.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import nats
import orjson
import zstandard
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from northpole.bus.stream import Delivery, Message
from northpole.bus.subjects import STREAM, STREAM_SUBJECTS
from northpole.core.errors import InvalidInput, Unavailable

MSG_ID_HEADER = "Nats-Msg-Id"
ENCODING_HEADER = "Northpole-Encoding"
#: Makes the server refuse a message that would land in another stream.
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
ZSTD = "zstd"
_decompressor = zstandard.ZstdDecompressor()


@dataclass(slots=True)
class _Batch:
    remaining: int
    done: asyncio.Future[None]
    fresh: int = 0
    errors: list[str] = field(default_factory=list)


class AckCounter:
    """Counts the stream's acknowledgements of each published batch.

    Every message of a batch is published with the reply subject
    ``<prefix>.<batch>``; the stream answers each with a JSON acknowledgement
    (``{"stream": ..., "seq": ..., "duplicate": true?}``) or an error, and
    :meth:`on_reply` tallies them. A batch is done when every message has
    answered.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)

    def start(self, size: int) -> tuple[str, _Batch]:
        """Open a batch of ``size`` messages; return its reply subject and its tally."""
        key = str(next(self._ids))
        batch = _Batch(size, asyncio.get_running_loop().create_future())
        self._batches[key] = batch
        return f"{self.prefix}.{key}", batch

    def finish(self, reply: str) -> None:
        """Forget a batch (done, or given up on: later replies are ignored)."""
        self._batches.pop(reply.rpartition(".")[2], None)

    async def on_reply(self, msg: Msg) -> None:
        """Tally one acknowledgement (or error) of a batch."""
        batch = self._batches.get(msg.subject.rpartition(".")[2])
        if batch is None:
            return
        try:
            body = orjson.loads(msg.data) if msg.data else {"error": {"description": "no reply"}}
        except orjson.JSONDecodeError:
            body = {"error": {"description": "unreadable acknowledgement"}}
        if "error" in body:
            batch.errors.append(str(body["error"].get("description", body["error"])))
        elif not body.get("duplicate"):
            batch.fresh += 1
        batch.remaining -= 1
        if batch.remaining <= 0 and not batch.done.done():
            batch.done.set_result(None)


class JetStreamConsumer:
    """A durable pull consumer."""

    def __init__(self, subscription: JetStreamContext.PullSubscription) -> None:
        self._subscription = subscription

    async def fetch(self, limit: int, *, timeout_s: float) -> list[Delivery]:
        """Return up to ``limit`` deliveries, waiting up to ``timeout_s`` for the first."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", field="limit")
        try:
            msgs = await self._subscription.fetch(limit, timeout=max(timeout_s, 0.001))
        except (TimeoutError, NatsTimeout):
            return []
        except NatsError as exc:
            raise Unavailable(f"NATS fetch failed: {exc}") from exc
        return [_delivery(msg) for msg in msgs]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge each delivery (the server then forgets it for this consumer)."""
        try:
            for delivery in deliveries:
                msg = delivery.token
                if not isinstance(msg, Msg):
                    raise InvalidInput("not a delivery of this stream", field="deliveries")
                await msg.ack()
        except NatsError as exc:
            raise Unavailable(f"NATS ack failed: {exc}") from exc


def _delivery(msg: Msg) -> Delivery:
    meta = msg.metadata
    headers = msg.headers or {}
    data = msg.data
    if headers.get(ENCODING_HEADER) == ZSTD:
        data = _decompressor.decompress(data)
    message = Message(msg.subject, data, headers.get(MSG_ID_HEADER, ""))
    return Delivery(message, meta.sequence.stream, meta.num_delivered, msg)


class JetStreamStream:
    """An :class:`~northpole.bus.stream.EventStream` on NATS JetStream.

    Args:
        url: NATS server URL(s), comma-separated.
        stream: The stream's name.
        subjects: The subjects it captures.
        duplicate_window_s: How long a ``msg_id`` is remembered.
        replicas: Copies of the stream in a NATS cluster (1 on a single server).
        publish_timeout_s: Longest wait for a batch's acknowledgements.
        compress_min_bytes: Payloads at least this large are zstd-compressed.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        subjects: Sequence[str] = STREAM_SUBJECTS,
        duplicate_window_s: float = 120.0,
        replicas: int = 1,
        publish_timeout_s: float = 10.0,
        compress_min_bytes: int = 1_024,
    ) -> None:
        self.compress_min_bytes = compress_min_bytes
        self._compressor = zstandard.ZstdCompressor(level=3)
        self.url = url
        self.stream = stream
        self.subjects = tuple(subjects)
        self.duplicate_window_s = duplicate_window_s
        self.replicas = replicas
        self.publish_timeout_s = publish_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: AckCounter | None = None

    async def open(self) -> JetStreamStream:
        """Connect and create (or update) the stream."""
        try:
            self._nc = await nats.connect(
                servers=self.url.split(","),
                connect_timeout=5,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
            )
            self._js = self._nc.jetstream()
            self._acks = AckCounter(self._nc.new_inbox())
            await self._nc.subscribe(f"{self._acks.prefix}.*", cb=self._acks.on_reply)
            config = StreamConfig(
                name=self.stream,
                subjects=list(self.subjects),
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
                num_replicas=self.replicas,
            )
            try:
                await self._js.stream_info(self.stream)
            except NotFoundError:
                await self._js.add_stream(config)
            else:
                await self._js.update_stream(config)
        except (NatsError, OSError) as exc:
            await self.close()
            raise Unavailable(f"NATS at {self.url}: {exc}") from exc
        return self

    @property
    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("the NATS stream is not open")
        return self._js

    async def publish(self, messages: Sequence[Message]) -> int:
        """Store ``messages``; return how many were new. Raise Unavailable unless all landed."""
        if not messages:
            return 0
        nc, acks = self._nc, self._acks
        if nc is None or acks is None:
            raise Unavailable("the NATS stream is not open")
        reply, batch = acks.start(len(messages))
        try:
            for message in messages:
                data, headers = self._encode(message)
                await nc.publish(message.subject, data, reply=reply, headers=headers)
            async with asyncio.timeout(self.publish_timeout_s):
                await batch.done
        except (NatsError, OSError, TimeoutError) as exc:
            raise Unavailable(f"NATS publish not confirmed: {exc or type(exc).__name__}") from exc
        finally:
            acks.finish(reply)
        if batch.errors:
            raise Unavailable(
                f"NATS refused {len(batch.errors)} of {len(messages)} messages: {batch.errors[0]}"
            )
        return batch.fresh

    def _encode(self, message: Message) -> tuple[bytes, dict[str, str]]:
        headers = {MSG_ID_HEADER: message.msg_id, EXPECTED_STREAM_HEADER: self.stream}
        if len(message.data) < self.compress_min_bytes:
            return message.data, headers
        headers[ENCODING_HEADER] = ZSTD
        return self._compressor.compress(message.data), headers

    async def consumer(
        self, durable: str, *, subjects: Sequence[str], ack_wait_s: float = 30.0
    ) -> JetStreamConsumer:
        """Return the durable pull consumer ``durable`` of ``subjects`` (created on first use)."""
        if not durable:
            raise InvalidInput("a durable consumer needs a name", field="durable")
        js = self._jetstream
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            filter_subjects=list(subjects),
        )
        try:
            try:
                await js.consumer_info(self.stream, durable)
            except NotFoundError:
                await js.add_consumer(self.stream, config)
            subscription = await js.pull_subscribe_bind(durable, self.stream)
        except NatsError as exc:
            raise Unavailable(f"NATS consumer {durable}: {exc}") from exc
        return JetStreamConsumer(subscription)

    async def close(self) -> None:
        """Flush what is buffered (acks) and close the connection.

        Publishes already waited for their acknowledgements, so nothing of
        value is in flight; ``drain`` would wait out pending pull requests.
        """
        nc, self._nc, self._js, self._acks = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.flush(timeout=2)
            except (NatsError, TimeoutError):
                pass  # closing anyway; unflushed acks are redelivered later
            await nc.close()

    async def __aenter__(self) -> JetStreamStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
