"""The CLI imports a command's module only when that command runs, so workers stay light.

``northpole worker`` must not load the servers, the exchange matcher or the
databases that other commands need: they cost a worker process more than
100 MB and a second of start-up. These tests run real worker processes (on
the local SQLite queue, and against a server URL nobody listens on) and look
at what they imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from northpole.cli import main as cli_main
from ports import free_port
from worker_imports import HEAVY, modules_of_worker


def test_a_worker_over_http_imports_none_of_the_heavy_modules(tmp_path: Path) -> None:
    """A ``--url`` worker imports no web server, matcher, database or coordination module."""
    url = f"http://127.0.0.1:{free_port()}"
    imported = modules_of_worker(tmp_path, "--url", url, "--token", "t")
    assert sorted(imported & HEAVY) == []


def test_a_local_worker_imports_none_of_the_heavy_modules(tmp_path: Path) -> None:
    """A worker on the local SQLite queue serves no HTTP and runs no matcher: it imports
    no web framework, matcher, database driver or coordination module."""
    imported = modules_of_worker(tmp_path)
    assert sorted(imported & HEAVY) == []


def test_the_worker_command_loads_no_other_command_module() -> None:
    """Resolving ``northpole worker`` (here for its help) imports its own module only."""
    script = (
        "import json, sys\n"
        "from northpole.cli.main import app\n"
        "try:\n"
        "    app(['worker', '--help'], prog_name='northpole')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "MODULE:REGISTRY" in done.stdout
    modules = json.loads(done.stdout.splitlines()[-1])
    commands = sorted(m for m in modules if m.startswith("northpole.cli.") and "_commands" in m)
    assert commands == ["northpole.cli.worker_commands"]
    assert sorted({m.partition(".")[0] for m in modules} & HEAVY) == []


@pytest.mark.parametrize("name", list(cli_main.COMMANDS))
def test_every_command_loads_from_where_the_table_says(name: str) -> None:
    """Each entry of ``COMMANDS`` names an importable command or Typer app."""
    command = cli_main.load_command(name, cli_main.COMMANDS[name])
    assert command.name == name
    assert command.help


def test_help_lists_every_command_in_the_tables_order() -> None:
    """``northpole --help`` shows every command of ``COMMANDS``, in its order."""
    result = CliRunner().invoke(cli_main.app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    rows = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ")]
    listed = [row for row in rows if row in cli_main.COMMANDS]
    assert listed == list(cli_main.COMMANDS)


def test_a_mistyped_command_is_answered_with_the_closest_name() -> None:
    """A typo gets a suggestion among all commands, loaded or not."""
    result = CliRunner().invoke(cli_main.app, ["wroker"])
    assert result.exit_code == 2
    assert "Did you mean 'worker'?" in result.output
