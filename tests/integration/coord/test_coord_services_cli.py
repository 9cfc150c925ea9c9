"""``northpole services`` against a real etcd, through the Typer app."""

from __future__ import annotations

import asyncio
import json

import pytest
import typer
from typer.testing import CliRunner

from etcd_servers import EtcdCluster
from northpole.cli.services_commands import services
from northpole.coord.client import EtcdClient
from northpole.coord.discovery import ServiceRegistrar
from northpole.coord.settings import CoordSettings
from northpole.core.app import Readiness

pytestmark = pytest.mark.integration


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("services")(services)
    app.command("other")(lambda: None)  # two commands keep "services" a subcommand
    return app


async def test_services_lists_registered_instances_as_json(etcd: EtcdCluster) -> None:
    """--json prints one object per instance with health and age."""
    settings = CoordSettings(endpoints=etcd.endpoints, lease_ttl_s=5)
    async with EtcdClient(etcd.endpoints) as client:
        registrar = ServiceRegistrar(
            client,
            settings,
            services={"idgen": lambda: Readiness(True), "tasks": lambda: Readiness(False, "db")},
            instance_id="node-1",
            address="http://10.0.0.1:8080",
            version="0.1.0",
        )
        await registrar.start()
        try:
            # the command runs its own event loop: call it from a thread
            result = await asyncio.to_thread(
                CliRunner().invoke,
                _app(),
                ["services", "--endpoints", ",".join(etcd.endpoints), "--json"],
            )
            table = await asyncio.to_thread(
                CliRunner().invoke,
                _app(),
                ["services", "idgen"],
                env={"NORTHPOLE_COORD__ENDPOINTS": json.dumps(etcd.endpoints)},
            )
        finally:
            await registrar.stop()
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["service"], r["health"]) for r in rows] == [
        ("idgen", "healthy"),
        ("tasks", "unhealthy"),
    ]
    assert rows[1]["detail"] == "db" and rows[0]["age_s"] >= 0
    assert table.exit_code == 0, table.output
    assert "node-1" in table.stdout and "healthy" in table.stdout and "tasks" not in table.stdout
