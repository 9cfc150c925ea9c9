"""``northpole id new`` and ``northpole id decode``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from northpole.core.errors import InvalidInput, Unavailable
from northpole.core.metrics import new_registry
from northpole.core.settings import Settings
from northpole.idgen.api import rfc3339_ms
from northpole.idgen.service import IdGenService
from northpole.idgen.snowflake import IDS_PER_MS, decode, parse_id

app = typer.Typer(help="Make and read Gift IDs.", no_args_is_help=True)


async def _local_ids(settings: Settings, count: int) -> list[int]:
    service = IdGenService(settings.idgen, data_dir=settings.data_dir, registry=new_registry())
    async with service.lifespan():
        return service.generate_list(count)


def _remote_ids(url: str, token: str, count: int) -> list[int]:
    import httpx  # only this command needs an HTTP client; keep it out of servers' memory

    ids: list[int] = []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while len(ids) < count:
            chunk = min(IDS_PER_MS, count - len(ids))
            response = client.post(
                "/api/v1/gift-id/generate",
                json={"count": chunk},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code != 200:
                raise Unavailable(f"{url} answered {response.status_code}: {response.text}")
            ids.extend(int(x) for x in response.json()["ids"])
    return ids


@app.command("new")
def new(
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="How many IDs.")] = 1,
    workshop_id: Annotated[
        int | None, typer.Option(min=0, max=1023, help="Workshop id for local generation.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Ask a running server instead, e.g. http://127.0.0.1:8080.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="NORTHPOLE_TOKEN", help="Bearer token for --url.")
    ] = None,
) -> None:
    """Print N new Gift IDs, one a line.

    Without --url the IDs are made here, holding the workshop id's lock in the
    data directory (so a server using the same id must not be running).
    """
    if url is not None:
        if not token:
            raise InvalidInput("--url needs a token (--token or NORTHPOLE_TOKEN)", field="token")
        ids = _remote_ids(url, token, n)
    else:
        settings = Settings()
        if workshop_id is not None:
            settings.idgen.workshop_id = workshop_id
        ids = asyncio.run(_local_ids(settings, n))
    typer.echo("\n".join(map(str, ids)))


@app.command("decode")
def decode_command(
    gift_id: Annotated[str, typer.Argument(metavar="ID", help="A Gift ID, decimal.")],
    epoch_ms: Annotated[
        int | None, typer.Option(help="Epoch in Unix ms (default: idgen.epoch_ms).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the timestamp, workshop id and sequence inside a Gift ID."""
    epoch = Settings().idgen.epoch_ms if epoch_ms is None else epoch_ms
    parts = decode(parse_id(gift_id), epoch_ms=epoch)
    fields = {
        "id": str(parts.id),
        "timestamp": rfc3339_ms(parts.unix_ms),
        "unix_ms": parts.unix_ms,
        "workshop_id": parts.workshop_id,
        "sequence": parts.sequence,
    }
    if as_json:
        typer.echo(orjson.dumps(fields).decode())
        return
    table = Table(title=f"Gift ID {parts.id}", show_header=False)
    for key, value in fields.items():
        table.add_row(key, str(value))
    Console().print(table)
