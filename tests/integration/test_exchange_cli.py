"""``northpole exchange`` and ``northpole keys`` against a live server (uvicorn in a thread).

The server is the Gift ID part plus the exchange part with the real matcher,
built the way ``northpole up`` builds them, on a free loopback port.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from northpole_proc import free_port
from pydantic import SecretStr
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from northpole.bus.port import InProcessBus
from northpole.cli import exchange_commands, keys_commands
from northpole.core.app import create_app
from northpole.core.auth import Role, TokenService
from northpole.core.clock import SystemClock
from northpole.core.errors import Conflict, InvalidInput, NotFound, Unauthenticated, Unavailable
from northpole.core.metrics import new_registry
from northpole.core.settings import AuthSettings, Settings
from northpole.exchange.crypto import SealError
from northpole.exchange.service import exchange_service
from northpole.exchange.settings import ExchangeSettings
from northpole.idgen.service import IdGenService

pytestmark = pytest.mark.integration

SECRET = "exchange-cli-test-secret-0123456789abcdef0123456789"
ORGANIZER = "organizer-elf"


@dataclass
class Live:
    """A running server, a token minter for it, and the server's captured log entries."""

    url: str
    tokens: TokenService
    logs: list[dict[str, Any]]

    def token(self, sub: str, role: Role) -> str:
        """A bearer token for ``sub`` with ``role``."""
        return self.tokens.issue(sub=sub, role=role)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """Serve idgen + exchange on a free loopback port for the duration of the test."""
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, auth=AuthSettings(secret=SecretStr(SECRET)))
    registry = new_registry()
    clock = SystemClock()
    idgen = IdGenService(settings.idgen, data_dir=data_dir, registry=registry, clock=clock)
    part = exchange_service(
        ExchangeSettings(),
        data_dir=data_dir,
        registry=registry,
        clock=clock,
        bus=InProcessBus(),
        ids=idgen.generate_list,
    )
    tokens = TokenService(SECRET.encode(), settings.auth, clock=clock)
    app = create_app(settings, [idgen, part], registry=registry, tokens=tokens)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws="none", http="h11")
    )
    thread = threading.Thread(target=server.run, name="exchange-cli-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the test server did not start")
        time.sleep(0.02)
    try:
        with capture_logs() as logs:  # keeps server lines out of the CLI's captured stdout
            yield Live(url=f"http://127.0.0.1:{port}", tokens=tokens, logs=logs)
    finally:
        server.should_exit = True
        thread.join(20)


def run(app: Any, *args: str, token: str | None = None) -> Result:
    """Invoke a Typer app in process, with NORTHPOLE_TOKEN set when given."""
    env = {"NORTHPOLE_TOKEN": token} if token else {}
    return CliRunner().invoke(app, list(args), env=env)


def ok(result: Result) -> str:
    """Assert success and return stdout."""
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def new_key(path: Path) -> str:
    """``keys new --out path``; return the printed public key."""
    return ok(run(keys_commands.app, "new", "--out", str(path))).strip()


def test_keys_new_writes_a_private_file_and_prints_the_public_key(tmp_path: Path) -> None:
    """The key file has mode 0600; ``keys public`` prints the same public key."""
    path = tmp_path / "me.key"
    public = new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ok(run(keys_commands.app, "public", "--key", str(path))).strip() == public
    again = run(keys_commands.app, "new", "--out", str(path))
    assert isinstance(again.exception, InvalidInput)


def test_create_join_match_reveal_end_to_end(live: Live, tmp_path: Path) -> None:
    """An organizer creates and matches; each participant joins and reveals their own match."""
    org = live.token(ORGANIZER, Role.OPERATOR)
    exchange_id = ok(
        run(
            exchange_commands.app,
            "create",
            "--name",
            "Workshop 2026",
            "--region",
            "north",
            "--year",
            "2026",
            "--url",
            live.url,
            token=org,
        )
    ).strip()
    assert exchange_id.isdigit()
    people = [f"elf-{i}-7c1f0e9a2b5d4c3e" for i in range(4)]
    for pid in people:
        key = tmp_path / f"{pid}.key"
        new_key(key)
        out = ok(
            run(
                exchange_commands.app,
                "join",
                exchange_id,
                "--id",
                pid,
                "--region",
                "north",
                "--budget",
                "20",
                "--key",
                str(key),
                "--url",
                live.url,
                "--json",
                token=live.token(pid, Role.PARTICIPANT),
            )
        )
        assert orjson.loads(out)["id"] == pid
    status = ok(run(exchange_commands.app, "status", exchange_id, "--url", live.url, token=org))
    assert "REGISTRATION" in status and "participants" in status
    matched = ok(
        run(exchange_commands.app, "match", exchange_id, "--url", live.url, "--json", token=org)
    )
    summary = orjson.loads(matched)
    assert (summary["phase"], summary["matches"]) == ("COMMITTED", 4)
    assert not any(pid in matched for pid in people if pid != summary["organizer"])
    receivers = []
    for pid in people:
        out = ok(
            run(
                exchange_commands.app,
                "reveal",
                exchange_id,
                "--key",
                str(tmp_path / f"{pid}.key"),
                "--url",
                live.url,
                "--json",
                token=live.token(pid, Role.PARTICIPANT),
            )
        )
        revealed = orjson.loads(out)
        assert (revealed["giver"], revealed["verified"]) == (pid, True)
        assert revealed["commitment_root"] == summary["commitment_root"]
        receivers.append(revealed["receiver"])
    assert sorted(receivers) == sorted(people)
    assert all(g != r for g, r in zip(people, receivers, strict=True))
    logged = [orjson.dumps(entry, default=str).decode() for entry in live.logs]
    assert any(exchange_id in line for line in logged)
    for giver, receiver in zip(people, receivers, strict=True):
        assert not any(giver in line and receiver in line for line in logged)
    table = ok(
        run(
            exchange_commands.app,
            "reveal",
            exchange_id,
            "--key",
            str(tmp_path / f"{people[0]}.key"),
            "--url",
            live.url,
            token=live.token(people[0], Role.PARTICIPANT),
        )
    )
    assert receivers[0] in table and "you give to" in table


def test_rule_flags_reach_the_exchange(live: Live) -> None:
    """``create`` flags set the rules; ``status --json`` shows them."""
    org = live.token(ORGANIZER, Role.OPERATOR)
    created = run(
        exchange_commands.app,
        *("create", "--name", "x", "--region", "n", "--year", "2027"),
        *("--budget-tolerance", "5", "--no-reciprocal", "--region-preference", "other"),
        *("--url", live.url),
        token=org,
    )
    exchange_id = ok(created).strip()
    status = run(
        exchange_commands.app, "status", exchange_id, "--json", "--url", live.url, token=org
    )
    body = orjson.loads(ok(status))
    assert body["year"] == 2027
    assert body["rules"] == {
        "budget_tolerance": 5.0,
        "no_reciprocal": True,
        "single_cycle": False,
        "cross_region_only": False,
        "allow_cross_region": False,
        "region_preference": "other",
    }


def test_a_malformed_exchange_id_is_refused_before_any_request(live: Live) -> None:
    """EXCHANGE_ID must be decimal: InvalidInput on ``exchange_id``."""
    result = run(exchange_commands.app, "status", "12\nx", "--url", live.url, token="t")
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.field == "exchange_id"


def test_errors_come_back_as_northpole_errors(live: Live, tmp_path: Path) -> None:
    """409, 404, 401, 422, a wrong key and an unreachable server each raise our error."""
    org = live.token(ORGANIZER, Role.OPERATOR)
    url = ("--url", live.url)
    exchange_id = ok(
        run(exchange_commands.app, "create", "--name", "x", "--region", "n", *url, token=org)
    ).strip()
    keys = {}
    for pid in ("alpha-5e0c2b", "beta-91d3aa", "gamma-07ffe1"):
        keys[pid] = tmp_path / f"{pid}.key"
        new_key(keys[pid])
        join = ("join", exchange_id, "--id", pid, "--region", "n", "--budget", "5")
        ok(run(exchange_commands.app, *join, "--key", str(keys[pid]), *url, token=org))
    bad = run(
        exchange_commands.app,
        *("join", exchange_id, "--id", "delta-1", "--region", "n", "--budget", "-1"),
        *("--key", str(keys["alpha-5e0c2b"]), *url),
        token=org,
    )
    assert isinstance(bad.exception, InvalidInput) and bad.exception.field == "budget"
    ok(run(exchange_commands.app, "match", exchange_id, *url, token=org))
    again = run(exchange_commands.app, "match", exchange_id, *url, token=org)
    assert isinstance(again.exception, Conflict)
    missing = run(exchange_commands.app, "status", "424242", *url, token=org)
    assert isinstance(missing.exception, NotFound)
    anonymous = run(exchange_commands.app, "status", exchange_id, *url)
    assert isinstance(anonymous.exception, Unauthenticated)
    wrong_key = run(
        exchange_commands.app,
        *("reveal", exchange_id, "--id", "alpha-5e0c2b", "--key", str(keys["beta-91d3aa"]), *url),
        token=live.token("alpha-5e0c2b", Role.PARTICIPANT),
    )
    assert isinstance(wrong_key.exception, SealError)
    gone = run(
        exchange_commands.app,
        "status",
        exchange_id,
        "--url",
        f"http://127.0.0.1:{free_port()}",
        token=org,
    )
    assert isinstance(gone.exception, Unavailable)


def test_an_infeasible_match_explains_itself(live: Live, tmp_path: Path) -> None:
    """Two people who exclude each other cannot be matched: the error names them."""
    org = live.token(ORGANIZER, Role.OPERATOR)
    url = ("--url", live.url)
    exchange_id = ok(
        run(exchange_commands.app, "create", "--name", "x", "--region", "n", *url, token=org)
    ).strip()
    a, b = "holly-3f9e1d2c", "ivy-8a7b6c5d"
    for pid, other in ((a, None), (b, a)):
        key = tmp_path / f"{pid}.key"
        new_key(key)
        extra = ("--exclude", other) if other else ()
        join = ("join", exchange_id, "--id", pid, "--region", "n", "--budget", "5", *extra)
        ok(run(exchange_commands.app, *join, "--key", str(key), *url, token=org))
    result = run(exchange_commands.app, "match", exchange_id, *url, token=org)
    assert isinstance(result.exception, InvalidInput)
    details = result.exception.details
    assert details is not None and details["kind"] in {"hall", "rule", "too_few"}
    assert b in result.exception.message
    status = orjson.loads(
        ok(run(exchange_commands.app, "status", exchange_id, *url, "--json", token=org))
    )
    assert status["phase"] == "REGISTRATION"
