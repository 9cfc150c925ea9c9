"""``northpole matcher serve --replica N``: one of the three exchange matcher replicas.

The cluster edition runs three such processes (replicas 0, 1 and 2) against
one etcd cluster (``NORTHPOLE_COORD__ENDPOINTS``), all with the same auth
secret. Each serves the exchange API (and Gift IDs, for new exchanges) on the
etcd exchange store; they elect a leader, follower replicas forward writes to
it, and matchings commit in two phases after the followers' votes (see
``docs/coordination.md``, *Matcher replicas*).
"""

from __future__ import annotations

from typing import Annotated

import typer
from fastapi import FastAPI

from northpole.bus.port import InProcessBus
from northpole.cli.serve_commands import HostOption, PortOption, _settings
from northpole.coord.part import CoordPart, workshop_allocator
from northpole.core.app import Part, create_app
from northpole.core.auth import TokenService, load_secret
from northpole.core.clock import SystemClock
from northpole.core.errors import ConfigurationError
from northpole.core.logging import configure_logging
from northpole.core.metrics import new_registry
from northpole.core.server import serve
from northpole.core.settings import Settings
from northpole.exchange.etcd_store import EtcdExchangeStore
from northpole.exchange.replica import MatcherReplica
from northpole.exchange.replica_proxy import ForwardWrites
from northpole.exchange.replica_settings import ReplicaSettings, replica_settings_from_env
from northpole.exchange.service import ExchangeService
from northpole.exchange.store import ExchangeStore
from northpole.idgen.service import IdGenService

app = typer.Typer(help="The exchange matcher replicas (cluster edition).", no_args_is_help=True)


@app.callback()
def matcher() -> None:
    """The exchange matcher replicas (cluster edition)."""


def matcher_settings(settings: Settings) -> ReplicaSettings:
    """The ``matcher`` settings group (from ``Settings`` once it carries one, else the env)."""
    group = getattr(settings, "matcher", None)
    return group if isinstance(group, ReplicaSettings) else replica_settings_from_env()


def build_replica_app(settings: Settings, *, replica: int) -> FastAPI:
    """Build the app of matcher replica ``replica``: Gift IDs, exchanges, matcher, discovery.

    Raises:
        ConfigurationError: No etcd endpoints, or a replica number out of range.
    """
    coord = settings.coord
    if coord.endpoints is None:
        raise ConfigurationError("matcher replicas need etcd: set NORTHPOLE_COORD__ENDPOINTS")
    group = matcher_settings(settings)
    if not 0 <= replica < group.replicas:
        raise ConfigurationError(f"--replica must be 0 to {group.replicas - 1}")
    registry = new_registry()
    clock = SystemClock()
    bus = InProcessBus()
    address = coord.advertise_address or f"http://{settings.http.host}:{settings.http.port}"
    secret = load_secret(settings)
    idgen = IdGenService(
        settings.idgen,
        data_dir=settings.ensure_data_dir(),
        registry=registry,
        clock=clock,
        allocator=workshop_allocator(coord, registry),
    )
    endpoints = coord.endpoints

    async def open_store() -> ExchangeStore:
        return await EtcdExchangeStore.connect(
            endpoints, root=coord.prefix, timeout_s=coord.request_timeout_s
        )

    matcher = MatcherReplica(
        group,
        coord,
        replica=replica,
        address=address,
        secret=secret,
        clock=clock,
        registry=registry,
    )
    exchange = ExchangeService(
        settings.exchange,
        open_store=open_store,
        registry=registry,
        clock=clock,
        bus=bus,
        ids=idgen.generate_list,
        committer=matcher,
    )
    matcher.attach(exchange)
    parts: list[Part] = [idgen, exchange, matcher]
    parts.append(CoordPart(coord, parts=list(parts), address=address, registry=registry))
    tokens = TokenService(secret, settings.auth, clock=clock)
    built = create_app(settings, parts, registry=registry, tokens=tokens)
    built.add_middleware(ForwardWrites, router=matcher, timeout_s=group.forward_timeout_s)
    return built


@app.command("serve")
def serve_replica(
    replica: Annotated[int, typer.Option("--replica", min=0, max=8, help="Replica number, 0-2.")],
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Run one matcher replica (cluster edition: needs NORTHPOLE_COORD__ENDPOINTS)."""
    settings = _settings(host, port)
    configure_logging(
        service=f"northpole-matcher-{replica}", level=settings.log_level, fmt=settings.log_format
    )
    serve(build_replica_app(settings, replica=replica), settings)
