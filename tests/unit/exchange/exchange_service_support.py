"""Helpers shared by the exchange service, API, privacy and CLI tests.

Participant ids are long random strings, so scanning stored bytes or log
lines for one of them is meaningful.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from nacl.public import PrivateKey
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from northpole.bus.port import InProcessBus
from northpole.core.app import create_app
from northpole.core.auth import Principal, Role, TokenService
from northpole.core.clock import FakeClock, SystemClock
from northpole.core.metrics import new_registry
from northpole.core.settings import AuthSettings, Settings
from northpole.exchange.crypto import new_private_key, public_key_b64
from northpole.exchange.model import (
    Explanation,
    ExplanationKind,
    Infeasible,
    Matching,
    Participant,
    Rules,
)
from northpole.exchange.policy import NewExchange
from northpole.exchange.service import ExchangeService, Matcher, exchange_service
from northpole.exchange.settings import ExchangeSettings
from northpole.exchange.sqlite_store import SqliteExchangeStore
from northpole.exchange.store import ExchangeStore
from northpole.idgen.service import IdGenService

START_MS = 1_767_225_600_000
DB = "exchange.db"
ORGANIZER = Principal(sub="organizer-elf", role=Role.OPERATOR)
OTHER_OPERATOR = Principal(sub="another-elf", role=Role.OPERATOR)
ADMIN = Principal(sub="santa", role=Role.ADMIN)


def new_id(prefix: str = "p") -> str:
    """Return a long random participant id."""
    return f"{prefix}-{secrets.token_hex(16)}"


def as_participant(pid: str) -> Principal:
    """The principal of participant ``pid``'s own token."""
    return Principal(sub=pid, role=Role.PARTICIPANT)


@dataclass
class People:
    """Participants with their private keys."""

    keys: dict[str, PrivateKey] = field(default_factory=dict)

    def make(
        self,
        pid: str | None = None,
        *,
        region: str = "north",
        budget: float = 20.0,
        exclusions: Sequence[str] = (),
        preferences: Sequence[str] = (),
        group: str | None = None,
    ) -> Participant:
        """Return a participant with a fresh key pair (the private half kept here)."""
        pid = pid or new_id()
        key = new_private_key()
        self.keys[pid] = key
        return Participant(
            id=pid,
            region=region,
            budget=budget,
            exclusions=frozenset(exclusions),
            preferences=tuple(preferences),
            group=group,
            public_key=public_key_b64(key),
        )


def shift_matcher(participants: Sequence[Participant], rules: Rules) -> Matching:
    """Each participant (sorted by id) gives to the next one: valid when nobody excludes anyone."""
    ids = sorted(p.id for p in participants)
    return Matching(pairs={g: ids[(i + 1) % len(ids)] for i, g in enumerate(ids)}, cost=0.0)


def infeasible_matcher(participants: Sequence[Participant], rules: Rules) -> Matching:
    """Always infeasible: the first participant cannot give to anybody."""
    first = sorted(p.id for p in participants)[0]
    raise Infeasible(
        Explanation(
            kind=ExplanationKind.HALL,
            message=f"{first} excludes everybody",
            givers=(first,),
            receivers=(),
        )
    )


class GatedMatcher:
    """Blocks in the solving thread until released, then matches like :func:`shift_matcher`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, participants: Sequence[Participant], rules: Rules) -> Matching:
        """Signal entry, wait for release (at most 30 s), then solve."""
        self.calls += 1
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the matcher")
        return shift_matcher(participants, rules)


@dataclass
class Harness:
    """A running exchange service on SQLite, with everything a test inspects."""

    service: ExchangeService
    clock: FakeClock
    bus: InProcessBus
    registry: CollectorRegistry
    path: Path
    people: People


def counting_ids(start: int = 1_000_000_000_000) -> Callable[[int], list[int]]:
    """Return an id source issuing increasing ids."""
    counter = itertools.count(start)
    return lambda n: [next(counter) for _ in range(n)]


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    *,
    matcher: Matcher | None = shift_matcher,
    settings: ExchangeSettings | None = None,
    people: People | None = None,
) -> AsyncIterator[Harness]:
    """Run an ExchangeService on ``tmp_path/exchange.db`` for the duration of the block."""
    clock = FakeClock(START_MS)
    bus = InProcessBus()
    registry = CollectorRegistry()
    path = tmp_path / DB

    async def open_store() -> ExchangeStore:
        return await SqliteExchangeStore(path).open()

    service = ExchangeService(
        settings or ExchangeSettings(),
        open_store=open_store,
        registry=registry,
        clock=clock,
        bus=bus,
        ids=counting_ids(),
        matcher=matcher,
    )
    async with service.lifespan():
        yield Harness(service, clock, bus, registry, path, people or People())


async def new_exchange(
    service: ExchangeService, *, rules: Rules | None = None, principal: Principal = ORGANIZER
) -> str:
    """Create an exchange organized by ``principal``; return its id."""
    record = await service.create(
        NewExchange(name="Workshop 2026", year=2026, region="north", rules=rules), principal
    )
    return record.exchange.id


SECRET = "exchange-api-test-secret-0123456789abcdef0123456789"


@dataclass
class App:
    """An app serving the Gift ID and exchange parts, and a token minter for it."""

    app: FastAPI
    tokens: TokenService
    registry: CollectorRegistry
    bus: InProcessBus

    def token(self, sub: str, role: Role) -> str:
        """Return a bearer token for ``sub`` with ``role``."""
        return self.tokens.issue(sub=sub, role=role)

    def headers(self, sub: str, role: Role) -> dict[str, str]:
        """Return the Authorization header for ``sub`` with ``role``."""
        return {"Authorization": f"Bearer {self.token(sub, role)}"}


def build_exchange_app(
    data_dir: Path,
    *,
    matcher: Matcher | None = None,
    settings: ExchangeSettings | None = None,
) -> App:
    """Build the app the way ``northpole up`` will: idgen first, exchange ids from it."""
    top = Settings(data_dir=data_dir, auth=AuthSettings(secret=SecretStr(SECRET)))
    registry = new_registry()
    bus = InProcessBus()
    clock = SystemClock()
    idgen = IdGenService(top.idgen, data_dir=data_dir, registry=registry, clock=clock)
    part = exchange_service(
        settings or ExchangeSettings(),
        data_dir=data_dir,
        registry=registry,
        clock=clock,
        bus=bus,
        ids=idgen.generate_list,
        matcher=matcher,
    )
    tokens = TokenService(SECRET.encode(), top.auth, clock=clock)
    app = create_app(top, [idgen, part], registry=registry, tokens=tokens)
    return App(app=app, tokens=tokens, registry=registry, bus=bus)
