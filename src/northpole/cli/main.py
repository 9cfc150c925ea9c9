"""``northpole``: one Typer app, ``northpole <part> <verb>``.

Results go to stdout (plain lines or tables, JSON with ``--json``); banners,
errors and log lines of short-lived commands go to stderr, so a command's
stdout can be piped. Servers log JSON lines to stdout.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from northpole.cli import (
    demo_commands,
    exchange_commands,
    id_commands,
    keys_commands,
    matcher_commands,
    registry_commands,
    serve_commands,
    services_commands,
    token_commands,
    worker_commands,
)
from northpole.core.errors import NorthpoleError
from northpole.core.logging import configure_logging

app = typer.Typer(
    name="northpole",
    help="Santa's distributed gift management system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("up")(serve_commands.up)
app.command("worker")(worker_commands.worker)
app.command("demo")(demo_commands.demo)
idgen_app = typer.Typer(help="The Gift ID service.", no_args_is_help=True)
idgen_app.command("serve")(serve_commands.idgen_serve)
app.add_typer(idgen_app, name="idgen")
app.add_typer(id_commands.app, name="id")
app.add_typer(token_commands.app, name="token")
app.add_typer(exchange_commands.app, name="exchange")
app.add_typer(keys_commands.app, name="keys")
app.add_typer(matcher_commands.app, name="matcher")
app.add_typer(registry_commands.app, name="registry")
app.command("services")(services_commands.services)


@app.command("version")
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
