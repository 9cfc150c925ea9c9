"""An app with the Gift ID service, the task queue and the gift registry, for HTTP tests.

The registry is mounted beside the parts :mod:`northpole.system` builds, on
SQLite in ``tmp_path``, with a MemoryStream as its event stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from northpole.bus.memory import MemoryStream
from northpole.bus.port import InProcessBus
from northpole.core.app import create_app
from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.clock import SystemClock
from northpole.core.metrics import new_registry
from northpole.core.settings import AuthSettings, Settings
from northpole.registry.service import RegistryService, build_registry_service
from northpole.registry.settings import RegistrySettings
from northpole.system import PARTS, Context

SECRET = "registry-api-test-secret-0123456789abcdef0123456789"
T = TypeVar("T")


@dataclass
class RegistryApp:
    """A running app and what tests look into."""

    client: TestClient
    settings: Settings
    service: RegistryService
    stream: MemoryStream

    def auth(self, role: Role | str = Role.OPERATOR) -> dict[str, str]:
        """An Authorization header for ``role``."""
        tokens = TokenService(load_secret(self.settings), self.settings.auth)
        return {"Authorization": f"Bearer {tokens.issue(sub='test', role=role)}"}

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of the first sample ``name`` with ``labels`` on /metrics."""
        text = self.client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None


@contextmanager
def registry_app(
    tmp_path: Path, registry_settings: RegistrySettings | None = None
) -> Iterator[RegistryApp]:
    """Start the app; stop it when the block ends."""
    settings = Settings(data_dir=tmp_path, auth=AuthSettings(secret=SecretStr(SECRET)))
    ctx = Context(
        settings=settings, registry=new_registry(), clock=SystemClock(), bus=InProcessBus()
    )
    for name in ("idgen", "tasks"):
        ctx.built[name] = PARTS[name](ctx)
    idgen: Any = ctx.built["idgen"]
    stream = MemoryStream()
    service = build_registry_service(
        registry_settings or RegistrySettings(),
        data_dir=tmp_path,
        epoch_ms=settings.idgen.epoch_ms,
        registry=ctx.registry,
        clock=ctx.clock,
        bus=ctx.bus,
        stream=stream,
        ids=idgen.generate_list,
    )
    tokens = TokenService(load_secret(settings), settings.auth, clock=ctx.clock)
    app = create_app(settings, [*ctx.built.values(), service], registry=ctx.registry, tokens=tokens)
    with TestClient(app) as client:
        yield RegistryApp(client, settings, service, stream)


def eventually(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)
