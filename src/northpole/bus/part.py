"""The events part: opens the event stream and forwards in-process events to it.

It is built before every other part (they publish through it) and started
first. In the embedded edition the stream is a :class:`MemoryStream`; with
``bus.nats_url`` set it is NATS JetStream. Parts whose changes must never lose
their event (the gift registry) run their own outbox relay on :attr:`stream`;
the others publish on the in-process bus, and this part forwards those of the
subjects in ``encoders`` (see :mod:`northpole.bus.forward` for what that
guarantees).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from northpole.bus.forward import Encoder, forwarding
from northpole.bus.memory import MemoryStream
from northpole.bus.nats import JetStreamStream
from northpole.bus.port import EventBus
from northpole.bus.stream import EventStream
from northpole.core.readiness import Readiness
from northpole.core.settings import BusSettings

if TYPE_CHECKING:  # a worker process builds streams without serving HTTP
    from fastapi import APIRouter


def build_stream(settings: BusSettings) -> EventStream:
    """The stream the settings ask for (not opened yet)."""
    if settings.nats_url:
        return JetStreamStream(
            settings.nats_url,
            duplicate_window_s=settings.duplicate_window_s,
            compress_min_bytes=settings.compress_min_bytes,
            replicas=settings.stream_replicas,
        )
    return MemoryStream()


class EventsPart:
    """Owns the event stream's lifecycle and the forwarder.

    Args:
        stream: The stream (opened on start when it is NATS).
        bus: The in-process bus parts publish on.
        encoders: Subjects to forward, each with its encoder.
    """

    name = "events"

    def __init__(self, stream: EventStream, bus: EventBus, encoders: Mapping[str, Encoder]) -> None:
        self.stream = stream
        self._bus = bus
        self._encoders = dict(encoders)
        self._open = False

    def router(self) -> APIRouter:
        """No routes of its own."""
        from fastapi import APIRouter

        return APIRouter()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open the stream, forward events while serving, close on the way out."""
        if isinstance(self.stream, JetStreamStream):
            await self.stream.open()
        try:
            async with forwarding(self._bus, self.stream, self._encoders):
                self._open = True
                try:
                    yield
                finally:
                    self._open = False
        finally:
            await self.stream.close()

    def readiness(self) -> Readiness:
        """Ready while the stream is open."""
        return Readiness(True) if self._open else Readiness(False, "event stream not open")
