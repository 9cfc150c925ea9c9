"""Assemble parts into a runnable app: the one place that knows every part.

``core`` may not import parts, and parts do not import each other, so the
wiring lives here, above them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from northpole.core.app import Part, create_app
from northpole.core.auth import TokenService, load_secret
from northpole.core.clock import Clock, SystemClock
from northpole.core.errors import ConfigurationError
from northpole.core.metrics import new_registry
from northpole.core.settings import Settings
from northpole.idgen.service import IdGenService

PartFactory = Callable[[Settings, CollectorRegistry, Clock], Part]


def _idgen(settings: Settings, registry: CollectorRegistry, clock: Clock) -> Part:
    return IdGenService(settings.idgen, data_dir=settings.data_dir, registry=registry, clock=clock)


#: Every part, in start-up order. ``northpole up`` runs all of them.
PARTS: dict[str, PartFactory] = {"idgen": _idgen}


def build_app(
    settings: Settings,
    *,
    parts: Sequence[str] | None = None,
    clock: Clock | None = None,
    on_started: Callable[[], None] | None = None,
) -> FastAPI:
    """Build an app serving ``parts`` (default: all) from ``settings``.

    ``on_started`` is called once every part has started.

    Raises:
        ConfigurationError: An unknown part name.
    """
    names = list(PARTS) if parts is None else list(parts)
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise ConfigurationError(f"unknown part(s): {', '.join(unknown)}")
    settings.ensure_data_dir()
    the_clock = clock or SystemClock()
    registry = new_registry()
    tokens = TokenService(load_secret(settings), settings.auth, clock=the_clock)
    built = [PARTS[name](settings, registry, the_clock) for name in names]
    return create_app(settings, built, registry=registry, tokens=tokens, on_started=on_started)
