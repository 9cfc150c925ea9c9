"""``northpole worker``: run a pool of task handlers against the queue.

::

    northpole worker --group elves --concurrency 8 myapp.tasks:registry
    northpole worker --url http://queue:8080 --types wrap,load myapp.tasks:registry

``MODULE:ATTRIBUTE`` names a :class:`~northpole.tasks.handlers.TaskRegistry`
(the current directory is importable, as with ``python -m``). With ``--url``
the worker talks HTTP to a server, with the token from ``--token`` or
``NORTHPOLE_TOKEN`` (role worker); without it, it opens the embedded edition's
queue in the data directory itself. SIGTERM or Ctrl-C drains (in-flight tasks
finish, acks are flushed) and exits 0; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from prometheus_client import start_http_server
from rich.console import Console
from rich.markup import escape

from northpole.core.errors import ConfigurationError
from northpole.core.logging import configure_logging, get_logger
from northpole.core.metrics import new_registry
from northpole.core.server import WORKER_GC_YOUNG_THRESHOLD, freeze_startup_heap
from northpole.core.settings import Settings
from northpole.tasks.backends import HttpBackend, LocalBackend, WorkerBackend
from northpole.tasks.handlers import TaskRegistry
from northpole.tasks.worker import WorkerPool

if TYPE_CHECKING:
    from northpole.bus.port import EventBus

_log = get_logger("northpole.worker")


def load_registry(target: str) -> TaskRegistry:
    """Import ``MODULE:ATTRIBUTE`` and return the :class:`TaskRegistry` it names.

    Raises:
        ConfigurationError: A malformed target, a module that fails to import,
            or an attribute that is missing or not a registry.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"expected MODULE:ATTRIBUTE (e.g. myapp.tasks:registry), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, TaskRegistry):
        raise ConfigurationError(
            f"{target} is a {type(found).__name__}, not a northpole TaskRegistry"
        )
    return found


def quiet_http_client_logs() -> None:
    """Log httpx at WARNING and above only: a line per heartbeat and claim is noise."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def parse_types(text: str | None) -> frozenset[str] | None:
    """Return the task types of a comma-separated ``--types`` value (``None``: not given)."""
    if text is None:
        return None
    return frozenset(t.strip() for t in text.split(",") if t.strip())


@asynccontextmanager
async def open_backend(
    settings: Settings, *, url: str | None, token: str | None
) -> AsyncIterator[WorkerBackend]:
    """Open the HTTP backend for ``url``, or the local queue in the data directory.

    Raises:
        ConfigurationError: ``--url`` without a token.
    """
    if url is not None:
        if not token:
            raise ConfigurationError("--url needs a token: --token or NORTHPOLE_TOKEN")
        backend = HttpBackend(url, token)
        try:
            yield backend
        finally:
            await backend.close()
        return
    from northpole.bus.port import InProcessBus
    from northpole.system import build_task_service

    bus = InProcessBus()
    service = build_task_service(settings, registry=new_registry(), bus=bus)
    async with _forwarding(settings, bus), service.lifespan():
        yield LocalBackend(service)


@asynccontextmanager
async def _forwarding(settings: Settings, bus: EventBus) -> AsyncIterator[None]:
    """With ``bus.nats_url`` set, forward the local queue's task events to the stream.

    A worker on the local queue makes the transitions itself (claims, starts,
    completions, failures), so it is the one to put their ``task.state_changed``
    events on NATS, as ``northpole up`` does for its own: the registry follows
    them there. Without NATS there is no stream shared between processes.
    """
    if not settings.bus.nats_url:
        yield
        return
    from northpole.bus.forward import forwarding
    from northpole.bus.nats import JetStreamStream
    from northpole.bus.part import build_stream
    from northpole.system import task_encoders

    stream = build_stream(settings.bus)
    if isinstance(stream, JetStreamStream):
        await stream.open()
    try:
        async with forwarding(bus, stream, task_encoders()):
            yield
    finally:
        await stream.close()


def _install_signals(pool: WorkerPool) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    seen: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        seen.append(sig)
        if len(seen) == 1:
            _log.info("signal received; draining", signal=sig.name)
            pool.stop()
        else:
            _log.warning("second signal; stopping without waiting", signal=sig.name)
            pool.abort()

    installed = [signal.SIGTERM, signal.SIGINT]
    for sig in installed:
        loop.add_signal_handler(sig, on_signal, sig)
    return installed


def _banner(pool: WorkerPool, where: str) -> None:
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    types = ", ".join(sorted(pool.task_types))
    console.print(
        f"[bold green]northpole worker[/] {escape(pool.worker_id)}: group "
        f"[bold]{escape(pool.group)}[/], {pool.concurrency} at once, types {escape(types)}, "
        f"queue {escape(where)} (stop with Ctrl-C)"
    )


async def run_worker(
    settings: Settings,
    make_pool: Callable[[WorkerBackend], WorkerPool],
    *,
    url: str | None,
    token: str | None,
) -> None:
    """Open the backend, run a pool until a signal, drain and return."""
    async with open_backend(settings, url=url, token=token) as backend:
        pool = make_pool(backend)
        # Here, not at start-up: the local backend imports the task queue's service and store.
        freeze_startup_heap(WORKER_GC_YOUNG_THRESHOLD)
        installed = _install_signals(pool)
        try:
            _banner(pool, url or f"{settings.data_dir} (local)")
            await pool.run()
        finally:
            for sig in installed:
                asyncio.get_running_loop().remove_signal_handler(sig)


def worker(
    target: Annotated[
        str, typer.Argument(metavar="MODULE:REGISTRY", help="Where the TaskRegistry lives.")
    ],
    group: Annotated[str, typer.Option(help="Consumer group.")] = "default",
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="Handlers at once.")] = 4,
    types: Annotated[
        str | None, typer.Option(help="Comma-separated task types (default: the registry's).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Server URL; without it, use the local data directory.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="NORTHPOLE_TOKEN", help="Bearer token (role worker).")
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(min=0, help="Tasks claimed beyond --concurrency (default: 10%, at least 1)."),
    ] = None,
    poll_wait_s: Annotated[
        float, typer.Option(min=0, max=30, help="Long-poll wait of each claim.")
    ] = 5.0,
    worker_id: Annotated[str | None, typer.Option(help="Default: host-pid-random.")] = None,
    lease_s: Annotated[
        float | None, typer.Option(min=1, help="Lease per claim (default: tasks.lease_ms).")
    ] = None,
    drain_timeout_s: Annotated[
        float, typer.Option(min=0, help="How long a stop waits for in-flight tasks.")
    ] = 30.0,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Serve /metrics on this port.")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface for --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run task handlers from MODULE:REGISTRY until SIGTERM or Ctrl-C (which drain)."""
    settings = Settings()
    configure_logging(service="northpole-worker", level=settings.log_level, fmt=settings.log_format)
    quiet_http_client_logs()
    registry = load_registry(target)
    metrics = new_registry()
    task_types = parse_types(types)
    lease = lease_s if lease_s is not None else settings.tasks.lease_ms / 1000
    if url is not None:
        lease = max(lease, 1.0)  # the HTTP API takes leases of 1 s and more

    def make_pool(backend: WorkerBackend) -> WorkerPool:
        return WorkerPool(
            registry,
            backend,
            group=group,
            concurrency=concurrency,
            prefetch=prefetch,
            poll_wait_s=poll_wait_s,
            worker_id=worker_id,
            task_types=task_types,
            lease_s=lease,
            drain_timeout_s=drain_timeout_s,
            metrics_registry=metrics,
        )

    server = None
    if metrics_port is not None:
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=metrics)
    try:
        asyncio.run(run_worker(settings, make_pool, url=url, token=token))
    finally:
        if server is not None:
            server.shutdown()
