"""``northpole up`` and ``northpole <part> serve``: run services over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.errors import ConfigurationError
from northpole.core.logging import configure_logging
from northpole.core.server import serve
from northpole.core.settings import Settings
from northpole.system import PARTS, build_app

#: ``northpole idgen``: the Gift ID service alone.
idgen_app = typer.Typer(help="The Gift ID service.", no_args_is_help=True)

HostOption = Annotated[str | None, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int | None, typer.Option(help="TCP port to listen on.")]


def _settings(host: str | None, port: int | None) -> Settings:
    settings = Settings()
    if host is not None:
        settings.http.host = host
    if port is not None:
        settings.http.port = port
    return settings


#: The cluster edition's servers: (what, its setting's variable, how to read it from settings).
CLUSTER_SERVERS: tuple[tuple[str, str, Callable[[Settings], object]], ...] = (
    ("PostgreSQL (gifts)", "NORTHPOLE_REGISTRY__DATABASE_URL", lambda s: s.registry.database_url),
    ("Redis (tasks)", "NORTHPOLE_TASKS__REDIS_URL", lambda s: s.tasks.redis_url),
    ("NATS (events)", "NORTHPOLE_BUS__NATS_URL", lambda s: s.bus.nats_url),
    ("etcd (coordination)", "NORTHPOLE_COORD__ENDPOINTS", lambda s: s.coord.endpoints),
)


def edition(settings: Settings) -> str:
    """``cluster`` with PostgreSQL, Redis and NATS configured (etcd is optional),
    ``embedded`` with none of them, ``mixed`` in between."""
    configured = [bool(read(settings)) for _, _, read in CLUSTER_SERVERS[:3]]
    return "cluster" if all(configured) else "mixed" if any(configured) else "embedded"


def check_cluster(settings: Settings) -> None:
    """Raise ConfigurationError naming every cluster server whose URL is missing.

    etcd is optional: without it, workshop ids come from settings (give every
    instance its own ``NORTHPOLE_IDGEN__WORKSHOP_ID``) and there is no discovery.
    """
    missing = [env for _, env, read in CLUSTER_SERVERS[:3] if not read(settings)]
    if missing:
        raise ConfigurationError(
            "--cluster needs the servers' URLs; set " + ", ".join(missing), field="cluster"
        )


def _banner(settings: Settings, parts: list[str]) -> None:
    base = f"http://{settings.http.host}:{settings.http.port}"
    rows = [
        ("serving", ", ".join(parts) + f" ({edition(settings)} edition)"),
        ("data directory", str(settings.data_dir.resolve())),
        *[(what, str(read(settings))) for what, _, read in CLUSTER_SERVERS if read(settings)],
        ("API docs", f"{base}/docs"),
        ("metrics", f"{base}/metrics"),
        ("liveness", f"{base}/healthz"),
        ("readiness", f"{base}/readyz"),
    ]
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    console.print(Panel("\n".join(f"[bold]{k:<15}[/] {v}" for k, v in rows), title="northpole"))
    if not sys.stderr.isatty():  # keep tokens out of captured logs
        console.print("Make a token with: northpole token create --role operator --sub you")
        return
    tokens = TokenService(load_secret(settings), settings.auth)
    token = tokens.issue(sub="local-operator", role=Role.OPERATOR, ttl_s=3600)
    console.print("Try it with an operator token valid for one hour (stop with Ctrl-C):")
    console.print(f"  export TOKEN={token}", markup=False)
    console.print(
        f'  curl -s -X POST -H "Authorization: Bearer $TOKEN" -d \'{{"count": 3}}\' '
        f"{base}/api/v1/gift-id/generate",
        markup=False,
    )


def _run(settings: Settings, parts: list[str], *, then: Callable[[], None] | None = None) -> None:
    configure_logging(service="northpole", level=settings.log_level, fmt=settings.log_format)

    def started() -> None:
        _banner(settings, parts)
        if then is not None:
            then()

    app = build_app(settings, parts=parts, on_started=started)
    serve(app, settings)


def _start_demo(settings: Settings, gifts: int) -> Callable[[], None]:
    """Return a callback starting ``northpole demo`` against this server in a child process."""

    def start() -> None:
        url = f"http://{settings.http.host}:{settings.http.port}"
        argv = [sys.executable, "-m", "northpole", "demo", "--url", url, "--gifts", str(gifts)]
        # The child inherits stdout/stderr and the NORTHPOLE_* environment (same data
        # directory, so the same signing key); it ends on its own, the server keeps serving.
        subprocess.Popen(argv)  # noqa: S603 - our own CLI, no shell

    return start


def up(
    host: HostOption = None,
    port: PortOption = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Once serving, run `northpole demo` against it.")
    ] = False,
    demo_gifts: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Gifts the demo registers.")
    ] = 10_000,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="Refuse to start unless PostgreSQL, Redis and NATS are configured."
        ),
    ] = False,
) -> None:
    """Run every service in one process on one port.

    The embedded edition needs nothing installed; the cluster edition is
    chosen by settings (NORTHPOLE_REGISTRY__DATABASE_URL, NORTHPOLE_TASKS__REDIS_URL,
    NORTHPOLE_BUS__NATS_URL, NORTHPOLE_COORD__ENDPOINTS): see docs/configuration.md.
    """
    settings = _settings(host, port)
    if cluster:
        check_cluster(settings)
    if demo and "NORTHPOLE_LOG_LEVEL" not in os.environ:
        # The demo's tens of thousands of requests would each log a line
        # between its progress bars; NORTHPOLE_LOG_LEVEL=INFO brings them back.
        settings.log_level = "WARNING"
    _run(settings, list(PARTS), then=_start_demo(settings, demo_gifts) if demo else None)


@idgen_app.command("serve")
def idgen_serve(
    host: HostOption = None,
    port: PortOption = None,
    workshop_id: Annotated[
        int | None, typer.Option(min=0, max=1023, help="Workshop id, 0-1023.")
    ] = None,
) -> None:
    """Run the Gift ID service alone."""
    settings = _settings(host, port)
    if workshop_id is not None:
        settings.idgen.workshop_id = workshop_id
    _run(settings, ["idgen"])
