"""``northpole services``: the instances registered in service discovery (etcd)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from northpole.coord.client import EtcdClient
from northpole.coord.discovery import Instance, ServiceResolver
from northpole.coord.keys import DEFAULT_ROOT, check_root
from northpole.coord.settings import parse_endpoints
from northpole.core.errors import InvalidInput


def endpoints_from(text: str | None) -> list[str]:
    """Read endpoints given as a JSON list (the settings' form) or comma-separated.

    Raises:
        InvalidInput: Nothing given.
    """
    if text and text.lstrip().startswith("["):
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"not a JSON list: {exc}", field="endpoints") from exc
        found = [str(item).strip() for item in items if str(item).strip()]
    else:
        found = parse_endpoints(text or "")
    if not found:
        raise InvalidInput(
            "no etcd endpoints: pass --endpoints or set NORTHPOLE_COORD__ENDPOINTS",
            field="endpoints",
        )
    return found


def describe(instance: Instance, now: float) -> dict[str, Any]:
    """Return one instance as a JSON-ready row (ages in seconds, at wall-clock ``now``)."""
    record = instance.record
    return {
        "service": instance.service,
        "instance_id": instance.instance_id,
        "address": record.address,
        "health": record.health,
        "detail": record.detail,
        "age_s": round(instance.age_s(now), 1),
        "checked_s_ago": round(max(0.0, now - record.checked_at), 1),
        "version": record.version,
    }


def render_table(rows: list[dict[str, Any]]) -> Table:
    """Return the rows as a rich table."""
    table = Table(title=f"{len(rows)} instance(s)")
    for column in ("service", "instance", "address", "health", "age", "checked", "version"):
        table.add_column(column)
    for row in rows:
        health = row["health"]
        colour = "green" if health == "healthy" else "red"
        table.add_row(
            row["service"],
            row["instance_id"],
            row["address"],
            f"[{colour}]{health}[/]" + ("" if health == "healthy" else f" ({row['detail']})"),
            _age(row["age_s"]),
            f"{_age(row['checked_s_ago'])} ago",
            row["version"],
        )
    return table


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


async def _instances(
    endpoints: list[str], prefix: str, service: str | None, timeout_s: float
) -> list[Instance]:
    async with EtcdClient(endpoints, timeout_s=timeout_s) as client:
        return await ServiceResolver(client, root=prefix, cache_s=0).instances(service)


def services(
    service: Annotated[
        str | None, typer.Argument(help="Only this service (for example idgen).")
    ] = None,
    endpoints: Annotated[
        str | None,
        typer.Option(
            envvar="NORTHPOLE_COORD__ENDPOINTS",
            help="etcd endpoints, comma-separated or a JSON list.",
        ),
    ] = None,
    prefix: Annotated[
        str, typer.Option(envvar="NORTHPOLE_COORD__PREFIX", help="Key root in etcd.")
    ] = DEFAULT_ROOT,
    timeout_s: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the service instances registered in etcd, with their health and age."""
    root = check_root(prefix)
    found = asyncio.run(_instances(endpoints_from(endpoints), root, service, timeout_s))
    now = time.time()
    rows = [describe(i, now) for i in sorted(found, key=lambda i: (i.service, i.instance_id))]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    Console().print(render_table(rows))
