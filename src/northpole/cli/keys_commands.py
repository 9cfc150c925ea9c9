"""``northpole keys new`` and ``northpole keys public``: X25519 keys for gift exchanges."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from northpole.exchange.crypto import (
    new_private_key,
    public_key_b64,
    read_private_key,
    write_private_key,
)

app = typer.Typer(
    help="X25519 key pairs: your exchange match is sealed to yours.", no_args_is_help=True
)

DEFAULT_KEY_FILE = Path("exchange.key")


@app.command("new")
def new(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the private key (mode 0600).")
    ] = DEFAULT_KEY_FILE,
) -> None:
    """Make a key pair: write the private key to OUT, print the public key (base64).

    Give the public key when you join an exchange; keep the file to reveal your match.
    An existing file is never overwritten.
    """
    key = new_private_key()
    write_private_key(out, key)
    typer.echo(f"wrote private key to {out}", err=True)
    typer.echo(public_key_b64(key))


@app.command("public")
def public(
    key: Annotated[
        Path, typer.Option("--key", "-k", help="A private key file.")
    ] = DEFAULT_KEY_FILE,
) -> None:
    """Print the public key (base64) of a private key file."""
    typer.echo(public_key_b64(read_private_key(key)))
