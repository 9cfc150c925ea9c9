"""``northpole token create``: mint a bearer token signed with this installation's key."""

from __future__ import annotations

from typing import Annotated

import typer

from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.settings import Settings

app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)


@app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="What the holder may do.")],
    sub: Annotated[str, typer.Option(help="Who holds it (a user, worker or service name).")],
    ttl: Annotated[
        int | None, typer.Option(min=1, help="Lifetime in seconds (default: auth.default_ttl_s).")
    ] = None,
) -> None:
    """Print a signed token for SUB with ROLE."""
    settings = Settings()
    tokens = TokenService(load_secret(settings), settings.auth)
    typer.echo(tokens.issue(sub=sub, role=role, ttl_s=ttl))
