"""Unit tests for northpole.cli.worker_commands: loading the registry, options and signals."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from northpole.cli import worker_commands
from northpole.core.errors import ConfigurationError
from northpole.core.settings import Settings
from northpole.tasks.backends import AckResult, Assignment, ClaimReply, Completion, Failure
from northpole.tasks.handlers import TaskRegistry
from northpole.tasks.store import Claim, Heartbeat, HeartbeatAnswer


def write_module(root: Path, name: str, source: str) -> None:
    """Write ``source`` as module ``name`` under ``root``."""
    (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for handler modules written by the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# -- load_registry -------------------------------------------------------------------------


def test_load_registry_imports_module_and_attribute(modules: Path) -> None:
    """``module:attr`` and ``module:a.b`` both find the registry."""
    write_module(
        modules,
        "elf_tasks_a",
        """
        from types import SimpleNamespace
        from northpole.tasks.handlers import TaskRegistry
        registry = TaskRegistry()
        registry.register("wrap", lambda ctx: None)
        nested = SimpleNamespace(registry=registry)
        """,
    )
    found = worker_commands.load_registry("elf_tasks_a:registry")
    assert isinstance(found, TaskRegistry) and found.types == frozenset({"wrap"})
    assert worker_commands.load_registry("elf_tasks_a:nested.registry") is found


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:ATTRIBUTE"),
        (":registry", "expected MODULE:ATTRIBUTE"),
        ("elf_tasks_b:", "expected MODULE:ATTRIBUTE"),
        ("surely_not_a_module_xyz:registry", "cannot import"),
        ("elf_tasks_b:missing", "has no attribute"),
        ("elf_tasks_b:not_registry", "is a dict, not a northpole TaskRegistry"),
    ],
)
def test_load_registry_explains_bad_targets(modules: Path, target: str, message: str) -> None:
    """Malformed targets, missing modules or attributes and non-registries are refused."""
    write_module(modules, "elf_tasks_b", "not_registry = {}\n")
    with pytest.raises(ConfigurationError, match=message):
        worker_commands.load_registry(target)


def test_parse_types_splits_and_trims() -> None:
    """``--types " a, b,,"`` means {a, b}; no option means the registry's types."""
    assert worker_commands.parse_types(" a, b,,") == frozenset({"a", "b"})
    assert worker_commands.parse_types(None) is None


async def test_url_without_token_is_refused() -> None:
    """--url needs a token (option or NORTHPOLE_TOKEN)."""
    with pytest.raises(ConfigurationError, match="needs a token"):
        async with worker_commands.open_backend(Settings(), url="http://x", token=None):
            pass


# -- the command, end to end in process ----------------------------------------------------


class OneTaskBackend:
    """Hands out one task, then nothing; records acks."""

    def __init__(self) -> None:
        self.given = False
        self.acks: list[Completion | Failure] = []

    async def claim(self, claim: Claim, *, wait_s: float) -> ClaimReply:
        """Return the task once."""
        if self.given:
            return ClaimReply([])
        self.given = True
        return ClaimReply([Assignment(1, 10, "wrap", 1, 1)])

    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Nothing to cancel."""
        return HeartbeatAnswer(cancel=(), partitions=())

    async def ack(
        self, worker_id: str, completed: Sequence[Completion], failed: Sequence[Failure]
    ) -> list[AckResult]:
        """Accept everything."""
        items: list[Completion | Failure] = [*completed, *failed]
        self.acks.extend(items)
        return [AckResult(a.task_id, True, "COMPLETED") for a in items]

    async def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
def fake_queue(monkeypatch: pytest.MonkeyPatch) -> OneTaskBackend:
    """Make the command use a OneTaskBackend and leave global logging alone."""
    backend = OneTaskBackend()
    seen: dict[str, Any] = {}

    @asynccontextmanager
    async def open_backend(
        settings: Settings, *, url: str | None, token: str | None
    ) -> AsyncIterator[OneTaskBackend]:
        seen.update(url=url, token=token)
        yield backend

    monkeypatch.setattr(worker_commands, "open_backend", open_backend)
    monkeypatch.setattr(worker_commands, "configure_logging", lambda **kwargs: None)
    monkeypatch.setattr(worker_commands, "quiet_http_client_logs", lambda: None)
    backend.seen = seen  # type: ignore[attr-defined]
    return backend


def invoke(*args: str, **env: str) -> Any:
    """Run the ``worker`` command in process."""
    app = typer.Typer()
    app.command()(worker_commands.worker)
    return CliRunner().invoke(app, list(args), env=env)


def test_sigterm_drains_the_running_task_and_exits_zero(
    modules: Path, fake_queue: OneTaskBackend
) -> None:
    """SIGTERM while a handler runs lets it finish, acks it, and exits with status 0."""
    write_module(
        modules,
        "elf_tasks_c",
        """
        import os, signal, time
        from northpole.tasks.handlers import TaskRegistry
        registry = TaskRegistry()

        @registry.handler("wrap")
        def wrap(ctx):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            return "wrapped during drain"
        """,
    )
    result = invoke("--url", "http://queue", "elf_tasks_c:registry", NORTHPOLE_TOKEN="tok-1")
    assert result.exit_code == 0, result.output
    assert fake_queue.acks == [Completion(1, 1, "wrapped during drain")]
    assert fake_queue.seen == {"url": "http://queue", "token": "tok-1"}  # type: ignore[attr-defined]
    assert "northpole worker" in result.stderr and "group default" in result.stderr


def test_second_signal_stops_without_waiting(modules: Path, fake_queue: OneTaskBackend) -> None:
    """A second signal abandons the in-flight task instead of waiting out the drain."""
    write_module(
        modules,
        "elf_tasks_d",
        """
        import os, signal, time
        from northpole.tasks.handlers import TaskRegistry
        registry = TaskRegistry()

        @registry.handler("wrap")
        def wrap(ctx):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while not ctx.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            return "abandoned"
        """,
    )
    began = time.monotonic()
    result = invoke("--drain-timeout-s", "60", "elf_tasks_d:registry")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - began < 8
    assert fake_queue.acks == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_types_must_have_handlers(modules: Path, fake_queue: OneTaskBackend) -> None:
    """``--types`` naming a type without a handler fails before any claim."""
    write_module(
        modules,
        "elf_tasks_e",
        """
        from northpole.tasks.handlers import TaskRegistry
        registry = TaskRegistry()
        registry.register("wrap", lambda ctx: None)
        """,
    )
    result = invoke("--types", "wrap,load", "elf_tasks_e:registry")
    assert isinstance(result.exception, ConfigurationError)
    assert "load" in result.exception.message
    assert not fake_queue.given
