"""Assemble parts into a runnable app: the one place that knows every part.

``core`` may not import parts, and parts do not import each other's internals,
so the wiring lives here, above them all. Parts are built in the order of
:data:`PARTS`, and a later part may use an earlier one's public API (the task
queue takes its task ids from the Gift ID service).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from northpole.bus.forward import Encoder
from northpole.bus.memory import MemoryStream
from northpole.bus.port import EventBus, InProcessBus
from northpole.bus.stream import EventStream, Message
from northpole.core.clock import Clock, SystemClock
from northpole.core.errors import ConfigurationError
from northpole.core.metrics import new_registry
from northpole.core.settings import Settings
from northpole.tasks.retry import RetryPolicy

# Parts are imported where they are built, not here: a worker process builds only
# the task queue, and importing the others (SciPy, SQLAlchemy, NATS, etcd, uvicorn)
# cost it about 110 MB and a second of start-up (tests/unit/cli/test_lazy_imports.py).
if TYPE_CHECKING:
    from fastapi import FastAPI

    from northpole.core.app import Part
    from northpole.idgen.service import IdGenService
    from northpole.tasks.service import TaskService
    from northpole.tasks.store import TaskStore

TASKS_DB = "tasks.db"


def task_encoders() -> dict[str, Encoder]:
    """The encoder of the task queue's events (``task.state_changed``) for the stream."""
    from northpole.tasks.events import task_event_message
    from northpole.tasks.model import TaskEvent
    from northpole.tasks.subjects import TASK_STATE_CHANGED

    def task_event(event: object) -> Message | None:
        return task_event_message(event) if isinstance(event, TaskEvent) else None

    return {TASK_STATE_CHANGED: task_event}


def _forwarded() -> dict[str, Encoder]:
    """Return the encoder of each subject the events part forwards to the stream."""
    from northpole.exchange.events import exchange_event_message
    from northpole.exchange.keys import EXCHANGE_COMMITTED

    return {**task_encoders(), EXCHANGE_COMMITTED: exchange_event_message}


class _BuiltOnFirstUse(Mapping[str, Encoder]):
    """A read-only mapping that ``build`` makes the first time it is read."""

    __slots__ = ("_build", "_built")

    def __init__(self, build: Callable[[], dict[str, Encoder]]) -> None:
        self._build = build
        self._built: dict[str, Encoder] | None = None

    def _items(self) -> dict[str, Encoder]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, subject: str) -> Encoder:
        return self._items()[subject]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


#: Events published on the in-process bus that the events part forwards to the stream.
#: Built on first use: the exchange's encoder imports the exchange part.
FORWARDED: Mapping[str, Encoder] = _BuiltOnFirstUse(_forwarded)


@dataclass(slots=True)
class Context:
    """What parts are built from."""

    settings: Settings
    registry: CollectorRegistry
    clock: Clock
    bus: EventBus
    stream: EventStream = field(default_factory=MemoryStream)
    built: dict[str, Part] = field(default_factory=dict)


PartFactory = Callable[[Context], "Part"]


def _idgen(ctx: Context) -> Part:
    from northpole.coord.part import workshop_allocator
    from northpole.idgen.service import IdGenService

    return IdGenService(
        ctx.settings.idgen,
        data_dir=ctx.settings.data_dir,
        registry=ctx.registry,
        clock=ctx.clock,
        allocator=workshop_allocator(ctx.settings.coord, ctx.registry),
    )


def _ids(ctx: Context, who: str) -> IdGenService:
    from northpole.idgen.service import IdGenService

    idgen = ctx.built.get("idgen")
    if not isinstance(idgen, IdGenService):
        raise ConfigurationError(f"the {who} needs the idgen part for its ids")
    return idgen


def _registry(ctx: Context) -> Part:
    from northpole.registry.service import build_registry_service

    return build_registry_service(
        ctx.settings.registry,
        data_dir=ctx.settings.ensure_data_dir(),
        epoch_ms=ctx.settings.idgen.epoch_ms,
        registry=ctx.registry,
        clock=ctx.clock,
        bus=ctx.bus,
        stream=ctx.stream,
        ids=_ids(ctx, "gift registry").generate_list,
    )


def _exchange(ctx: Context) -> Part:
    from northpole.exchange.service import exchange_service

    return exchange_service(
        ctx.settings.exchange,
        data_dir=ctx.settings.ensure_data_dir(),
        registry=ctx.registry,
        clock=ctx.clock,
        bus=ctx.bus,
        ids=_ids(ctx, "exchange service").generate_list,
    )


def task_service(ctx: Context, *, with_ids: bool = True) -> TaskService:
    """Build the task queue part on the embedded SQLite store in the data directory.

    Args:
        ctx: The shared context.
        with_ids: Take task ids from the already built Gift ID part (needed to
            accept submits; a worker process that only claims can do without).
    """
    from northpole.tasks.service import TaskService

    settings = ctx.settings
    ids = _ids(ctx, "task queue").generate_list if with_ids else None
    tasks = settings.tasks
    policy = RetryPolicy(
        base_ms=tasks.retry_base_ms, factor=tasks.retry_factor, max_ms=tasks.retry_max_ms
    )

    async def open_store() -> TaskStore:
        if tasks.redis_url:  # cluster edition
            from northpole.tasks.redis_store import RedisTaskStore

            redis = RedisTaskStore(
                tasks.redis_url,
                partitions=tasks.partitions,
                aging_ms=tasks.aging_ms,
                policy=policy,
                wait_replicas=tasks.redis_wait_replicas,
                wait_timeout_ms=tasks.redis_wait_timeout_ms,
            )
            return await redis.open()
        from northpole.tasks.sqlite_store import SqliteTaskStore

        store = SqliteTaskStore(
            settings.ensure_data_dir() / TASKS_DB,
            partitions=tasks.partitions,
            aging_ms=tasks.aging_ms,
            policy=policy,
        )
        return await store.open()

    return TaskService(
        tasks, open_store=open_store, registry=ctx.registry, clock=ctx.clock, bus=ctx.bus, ids=ids
    )


def build_task_service(
    settings: Settings,
    *,
    registry: CollectorRegistry,
    clock: Clock | None = None,
    bus: EventBus | None = None,
) -> TaskService:
    """Build a task queue service that can claim and report but not submit.

    For a worker process of the embedded edition: it opens the same SQLite
    file as ``northpole up`` (WAL mode lets both use it) and runs a sweeper too
    (sweeps are safe to run in several processes at once).
    """
    ctx = Context(
        settings=settings,
        registry=registry,
        clock=clock or SystemClock(),
        bus=bus or InProcessBus(),
    )
    return task_service(ctx, with_ids=False)


#: Every part, in start-up order. ``northpole up`` runs all of them.
PARTS: dict[str, PartFactory] = {
    "idgen": _idgen,
    "tasks": task_service,
    "registry": _registry,
    "exchange": _exchange,
}


def build_app(
    settings: Settings,
    *,
    parts: Sequence[str] | None = None,
    clock: Clock | None = None,
    bus: EventBus | None = None,
    on_started: Callable[[], None] | None = None,
) -> FastAPI:
    """Build an app serving ``parts`` (default: all) from ``settings``.

    ``on_started`` is called once every part has started.

    Raises:
        ConfigurationError: An unknown part name, or a part without one it needs.
    """
    from northpole.bus.part import EventsPart, build_stream
    from northpole.coord.part import CoordPart
    from northpole.core.app import create_app
    from northpole.core.auth import TokenService, load_secret

    names = list(PARTS) if parts is None else list(parts)
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise ConfigurationError(f"unknown part(s): {', '.join(unknown)}")
    settings.ensure_data_dir()
    ctx = Context(
        settings=settings,
        registry=new_registry(),
        clock=clock or SystemClock(),
        bus=bus or InProcessBus(),
        stream=build_stream(settings.bus),
    )
    if any(name != "idgen" for name in names):  # parts with events: the stream starts first
        ctx.built["events"] = EventsPart(ctx.stream, ctx.bus, FORWARDED)
    for name in PARTS:  # build in dependency order, whatever order was asked for
        if name in names:
            ctx.built[name] = PARTS[name](ctx)
    if settings.coord.enabled:  # cluster edition: every part registers in discovery
        ctx.built["coord"] = CoordPart(
            settings.coord,
            parts=list(ctx.built.values()),
            address=f"http://{settings.http.host}:{settings.http.port}",
            registry=ctx.registry,
        )
    tokens = TokenService(load_secret(settings), settings.auth, clock=ctx.clock)
    return create_app(
        settings,
        list(ctx.built.values()),
        registry=ctx.registry,
        tokens=tokens,
        on_started=on_started,
    )
