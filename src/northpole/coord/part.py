"""The coordination part: registers every other part of the process in service discovery.

Mounted last (after the parts it registers have started) when ``coord.endpoints``
is set. Each part becomes one service of this instance, and its readiness is
the health check run every ``coord.health_interval_s``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

import northpole
from northpole.coord.client import EtcdClient
from northpole.coord.discovery import ServiceRegistrar
from northpole.coord.metrics import coord_metrics
from northpole.coord.settings import CoordSettings
from northpole.coord.workshop import EtcdWorkshopAllocator
from northpole.core.app import Part, Readiness
from northpole.core.errors import ConfigurationError
from northpole.idgen.allocator import WorkshopIdAllocator


def default_instance_id() -> str:
    """Return ``<host>-<pid>``, a registry id unique among live processes."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host.strip('-.') or 'host'}-{os.getpid()}"


def workshop_allocator(
    settings: CoordSettings, registry: CollectorRegistry
) -> WorkshopIdAllocator | None:
    """Return the etcd workshop-id allocator when etcd is configured, else ``None``.

    ``None`` lets the Gift ID service fall back to its embedded lock-file allocator.
    """
    if not settings.enabled:
        return None
    return EtcdWorkshopAllocator(settings, metrics=coord_metrics(registry))


class CoordPart:
    """Register ``parts`` in etcd for as long as the app runs.

    Args:
        settings: The ``coord`` settings (endpoints must be set).
        parts: The parts to register, each under its own name.
        address: Where other services reach this process (``coord.advertise_address``
            wins when set).
        registry: Where the coordination metrics go.
    """

    name = "coord"

    def __init__(
        self,
        settings: CoordSettings,
        *,
        parts: Sequence[Part],
        address: str,
        registry: CollectorRegistry,
    ) -> None:
        if settings.endpoints is None:
            raise ConfigurationError("the coord part needs coord.endpoints")
        self.settings = settings
        self.parts = list(parts)
        self.address = settings.advertise_address or address
        self.instance_id = settings.instance_id or default_instance_id()
        self.metrics = coord_metrics(registry)
        self.registrar: ServiceRegistrar | None = None

    def router(self) -> APIRouter:
        """No routes: discovery is read from etcd (``northpole services``)."""
        return APIRouter()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Register on enter, deregister on exit."""
        endpoints = self.settings.endpoints or []
        async with EtcdClient(endpoints, timeout_s=self.settings.request_timeout_s) as client:
            registrar = ServiceRegistrar(
                client,
                self.settings,
                services={part.name: part.readiness for part in self.parts},
                instance_id=self.instance_id,
                address=self.address,
                version=northpole.__version__,
                metrics=self.metrics,
            )
            await registrar.start()
            self.registrar = registrar
            try:
                yield
            finally:
                self.registrar = None
                await registrar.stop()

    def readiness(self) -> Readiness:
        """Ready while the registrations' lease holds."""
        if self.registrar is None:
            return Readiness(False, "not registered")
        if not self.registrar.registered():
            return Readiness(False, "discovery lease lost; registering again")
        return Readiness(True)
