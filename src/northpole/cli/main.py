"""``northpole``: one Typer app, ``northpole <part> <verb>``.

Results go to stdout (plain lines or tables, JSON with ``--json``); banners,
errors and log lines of short-lived commands go to stderr, so a command's
stdout can be piped. Servers log JSON lines to stdout.

Each command's module is imported when the command is looked up (to run it or
to list it in help), not when the CLI starts: ``northpole worker`` loads the
task queue and its worker, not the servers, the exchange matcher and the
database drivers that other commands need (those took a worker from about
60 MB to 175 MB and added a second to its start-up).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from northpole.core.errors import NorthpoleError
from northpole.core.logging import configure_logging

if TYPE_CHECKING:
    from typer._click import Command  # Typer's own copy of click

#: Every command, in the order ``northpole --help`` lists them, and where it is
#: defined: ``module:attribute`` names a command function or a Typer app of subcommands.
COMMANDS: dict[str, str] = {
    "up": "northpole.cli.serve_commands:up",
    "worker": "northpole.cli.worker_commands:worker",
    "demo": "northpole.cli.demo_commands:demo",
    "services": "northpole.cli.services_commands:services",
    "version": f"{__name__}:version",
    "idgen": "northpole.cli.serve_commands:idgen_app",
    "id": "northpole.cli.id_commands:app",
    "token": "northpole.cli.token_commands:app",
    "exchange": "northpole.cli.exchange_commands:app",
    "keys": "northpole.cli.keys_commands:app",
    "matcher": "northpole.cli.matcher_commands:app",
    "registry": "northpole.cli.registry_commands:app",
}


def load_command(name: str, target: str) -> Command:
    """Import ``target`` (``module:attribute``) and return it as the click command ``name``.

    The command is built as registering it on the root app would build it: a
    Typer app as by ``add_typer``, a function as by ``command``.
    """
    module_name, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module_name), attribute)
    holder = typer.Typer(
        rich_markup_mode=app.rich_markup_mode, pretty_exceptions_short=app.pretty_exceptions_short
    )
    if isinstance(found, typer.Typer):
        holder.add_typer(found, name=name)
    else:
        holder.command(name)(found)
    return typer.main.get_group(holder).commands[name]


class LazyCommands(MutableMapping[str, "Command"]):
    """A group's commands by name, each built from :data:`COMMANDS` when first looked up.

    Listing the names (help, "did you mean" suggestions) imports nothing.
    """

    def __init__(self, where: Mapping[str, str], built: Mapping[str, Command]) -> None:
        self._where = dict(where)
        self._built = dict(built)

    def __getitem__(self, name: str) -> Command:
        command = self._built.get(name)
        if command is None:
            command = self._built[name] = load_command(name, self._where[name])
        return command

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._where.pop(name, None)
        self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._where or name in self._built

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._where), **dict.fromkeys(self._built)})

    def __len__(self) -> int:
        return len(self._where.keys() | self._built.keys())


class LazyGroup(TyperGroup):
    """The root group: the commands of :data:`COMMANDS`, imported on first use."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(COMMANDS, self.commands)


app = typer.Typer(
    name="northpole",
    help="Santa's distributed gift management system.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Make ``app`` a group while none of its commands is loaded yet (no options of its own)."""


def version(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also the Python version.")
    ] = False,
) -> None:
    """Print the northpole version."""
    import northpole

    typer.echo(northpole.__version__ + (f" (Python {sys.version.split()[0]})" if verbose else ""))


def main() -> None:
    """Run the CLI, turning northpole errors into a message and exit code 2."""
    # Short-lived commands log warnings only, to stderr; servers reconfigure at start.
    configure_logging(service="northpole-cli", level="WARNING", stream=sys.stderr)
    try:
        app()
    except NorthpoleError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise SystemExit(2) from None
