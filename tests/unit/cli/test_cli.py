"""Tests of the ``northpole`` command line through Typer's CliRunner and the installed script."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import northpole
from northpole.cli import main as cli_main
from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.errors import InvalidInput
from northpole.core.settings import Settings
from northpole.idgen.snowflake import decode

Invoke = Callable[..., Result]

SAMPLE_ID = 132_271_570_944_012_288  # 2026-01-01T00:00:00.000Z, workshop 3, sequence 0.


@pytest.fixture
def invoke(tmp_path: Path) -> Invoke:
    """Return a function running the CLI in-process with NORTHPOLE_DATA_DIR set to tmp_path."""
    runner = CliRunner()

    def run(*args: str, **env: str) -> Result:
        full_env = {"NORTHPOLE_DATA_DIR": str(tmp_path), **env}
        return runner.invoke(cli_main.app, list(args), env=full_env)

    return run


def run_script(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``northpole`` script in a clean environment."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "northpole"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "NORTHPOLE_DATA_DIR": str(data_dir)},
    )


def digit_lines(text: str) -> list[int]:
    """Return the lines of ``text`` that are decimal integers, as integers."""
    return [int(line) for line in text.splitlines() if line.strip().isdigit()]


def test_token_create_prints_a_verifiable_token(invoke: Invoke, tmp_path: Path) -> None:
    """``token create`` prints one token that verifies against the data dir's secret."""
    result = invoke("token", "create", "--role", "operator", "--sub", "me")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2
    settings = Settings(data_dir=tmp_path)
    principal = TokenService(load_secret(settings), settings.auth).verify(token)
    assert (principal.sub, principal.role) == ("me", Role.OPERATOR)


def test_token_create_rejects_unknown_role(invoke: Invoke) -> None:
    """An unknown role is a usage error with a non-zero exit and no token."""
    result = invoke("token", "create", "--role", "root", "--sub", "me")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--role" in result.stderr


def test_token_create_rejects_zero_ttl(invoke: Invoke) -> None:
    """A ttl below 1 is a usage error."""
    result = invoke("token", "create", "--role", "admin", "--sub", "me", "--ttl", "0")
    assert result.exit_code == 2


def test_token_create_rejects_empty_subject(invoke: Invoke) -> None:
    """An empty subject raises InvalidInput naming ``sub``."""
    result = invoke("token", "create", "--role", "admin", "--sub", "")
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.field == "sub"


def test_id_new_prints_increasing_ids(invoke: Invoke) -> None:
    """``id new -n 5`` prints five strictly increasing ids of workshop 0."""
    result = invoke("id", "new", "-n", "5")
    assert result.exit_code == 0, result.output
    ids = digit_lines(result.stdout)
    assert len(ids) == 5
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert {decode(i).workshop_id for i in ids} == {0}


def test_id_new_uses_given_workshop_id(invoke: Invoke) -> None:
    """``--workshop-id`` sets the workshop bits of the printed ids."""
    result = invoke("id", "new", "-n", "2", "--workshop-id", "9")
    assert result.exit_code == 0, result.output
    assert {decode(i).workshop_id for i in digit_lines(result.stdout)} == {9}


def test_id_new_twice_keeps_increasing(invoke: Invoke) -> None:
    """A second run on the same data dir prints ids above the first run's."""
    # A short reservation keeps the second run's start-up wait (the rest of it) brief.
    first = digit_lines(invoke("id", "new", "-n", "3", NORTHPOLE_IDGEN__RESERVE_MS="10").stdout)
    second = digit_lines(invoke("id", "new", "-n", "3", NORTHPOLE_IDGEN__RESERVE_MS="10").stdout)
    assert len(first) == len(second) == 3
    assert max(first) < min(second)


def test_id_new_stdout_holds_only_ids(tmp_path: Path) -> None:
    """``northpole id new -n 5`` writes exactly the five ids to stdout, for scripts to read."""
    completed = run_script(tmp_path, "id", "new", "-n", "5")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert all(line.isdigit() for line in lines), lines
    assert len(lines) == 5


def test_id_new_rejects_zero_count(invoke: Invoke) -> None:
    """``-n 0`` is a usage error."""
    assert invoke("id", "new", "-n", "0").exit_code == 2


def test_id_new_url_needs_token(invoke: Invoke) -> None:
    """``--url`` without a token raises InvalidInput naming ``token``."""
    result = invoke("id", "new", "--url", "http://127.0.0.1:9")
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.field == "token"


def test_id_decode_json_prints_fields(invoke: Invoke) -> None:
    """``id decode <id> --json`` prints the id's fields as one JSON object."""
    result = invoke("id", "decode", str(SAMPLE_ID), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "id": str(SAMPLE_ID),
        "timestamp": "2026-01-01T00:00:00.000Z",
        "unix_ms": 1_767_225_600_000,
        "workshop_id": 3,
        "sequence": 0,
    }


def test_id_decode_epoch_option(invoke: Invoke) -> None:
    """``--epoch-ms`` decodes against another epoch."""
    result = invoke("id", "decode", str(1 << 22), "--json", "--epoch-ms", "0")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unix_ms"] == 1


def test_id_decode_table_lists_fields(invoke: Invoke) -> None:
    """Without ``--json``, ``id decode`` shows a table with every field."""
    result = invoke("id", "decode", str(SAMPLE_ID))
    assert result.exit_code == 0, result.output
    for text in ("timestamp", "2026-01-01T00:00:00.000Z", "workshop_id", "sequence"):
        assert text in result.output


def test_id_decode_rejects_non_id_in_process(invoke: Invoke) -> None:
    """``id decode abc`` raises InvalidInput naming ``id`` (CliRunner sees the exception)."""
    result = invoke("id", "decode", "abc")
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.field == "id"


def test_main_turns_northpole_error_into_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() prints ``error: <message>`` to stderr and exits 2 on a NorthpoleError."""
    monkeypatch.setattr(sys, "argv", ["northpole", "id", "decode", "abc"])
    with pytest.raises(SystemExit) as caught:
        cli_main.main()
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error:" in captured.err
    assert "decimal integer" in captured.err


def test_installed_script_exits_2_on_bad_id(tmp_path: Path) -> None:
    """The installed ``northpole`` script exits 2 with an error on stderr for a bad id."""
    completed = run_script(tmp_path, "id", "decode", "abc")
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "error:" in completed.stderr


def test_version_prints_package_version(invoke: Invoke) -> None:
    """``version`` prints the package version; ``-v`` adds the Python version."""
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout.strip() == northpole.__version__
    verbose = invoke("version", "-v")
    assert verbose.stdout.startswith(northpole.__version__ + " (Python 3.")


def test_no_arguments_shows_help(invoke: Invoke) -> None:
    """Running with no arguments shows the command list."""
    result = invoke()
    for command in ("id", "token", "version", "up", "idgen"):
        assert command in result.output
