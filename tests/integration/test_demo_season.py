"""``northpole demo`` end to end: a season on the embedded edition and on the cluster edition."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from northpole_proc import NorthpoleFactory, NorthpoleProcess, free_port

from nats_servers import running_nats
from northpole.bus.nats import JetStreamStream
from postgres_servers import PostgresProcess, postgres_server
from redis_servers import start_redis

__all__ = ["postgres_server"]

pytestmark = pytest.mark.integration

GIFTS = 300
ELVES = 12
STAGES = 4


def run_demo(procs: NorthpoleFactory, server: NorthpoleProcess, env: dict[str, str]) -> Any:
    """Run ``northpole demo --json`` against ``server``; return its report."""
    result = procs.cli(
        "demo",
        "--url",
        server.base_url,
        "--gifts",
        str(GIFTS),
        "--elves",
        str(ELVES),
        "--flaky",
        "0.05",
        "--json",
        data_dir=server.data_dir,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return orjson.loads(result.stdout.strip().splitlines()[-1])


def check_report(report: Any) -> None:
    """Every gift delivered, every flaky task retried once, the exchange committed and opened."""
    assert report["gifts"] == GIFTS
    assert report["tasks"] == GIFTS * STAGES
    assert report["by_status"].get("DELIVERED") == GIFTS
    assert report["flaky"] > 0
    assert report["retried_ok"] == report["flaky"]
    assert report["exchange_phase"] == "COMMITTED"
    assert report["participants"] == ELVES
    assert report["opened"] == ELVES
    assert report["commitments_ok"] == ELVES


def test_demo_season_on_the_embedded_edition(procs: NorthpoleFactory) -> None:
    """On the embedded edition the demo delivers every gift and commits the exchange."""
    server = procs.up()
    check_report(run_demo(procs, server, {}))
    assert server.stop() == 0


async def count_events(url: str, subject: str) -> int:
    """How many events of ``subject`` the NATS stream holds."""
    stream = await JetStreamStream(url).open()
    try:
        consumer = await stream.consumer(f"count-{subject.replace('.', '-')}", subjects=[subject])
        total = 0
        while batch := await consumer.fetch(1_000, timeout_s=1):
            total += len(batch)
            await consumer.ack(batch)
        return total
    finally:
        await stream.close()


def test_demo_season_on_the_cluster_edition(
    procs: NorthpoleFactory, postgres_server: PostgresProcess, tmp_path: Path
) -> None:
    """`up --cluster` on throwaway PostgreSQL, Redis and NATS: the same season; events on NATS."""
    redis = start_redis(tmp_path / "redis")
    database = postgres_server.create_database()
    try:
        with running_nats(tmp_path / "nats") as nats:
            env = {
                "NORTHPOLE_REGISTRY__DATABASE_URL": postgres_server.url(database),
                "NORTHPOLE_TASKS__REDIS_URL": redis.url,
                "NORTHPOLE_BUS__NATS_URL": nats.url,
            }
            data = procs.data_dir("cluster")
            server = procs.spawn(
                "up",
                "--cluster",
                data_dir=data,
                name="up-cluster",
                port=free_port(),
                env=env,
                token=procs.token(data),
            )
            server.wait_ready()
            check_report(run_demo(procs, server, env))
            assert "cluster edition" in server.stderr()
            assert server.stop() == 0
            created = asyncio.run(count_events(nats.url, "gift.created"))
            committed = asyncio.run(count_events(nats.url, "exchange.committed"))
            task_events = asyncio.run(count_events(nats.url, "task.state_changed"))
        assert created == GIFTS
        assert committed == 1
        assert task_events >= GIFTS * STAGES * 2  # at least assigned and completed per task
    finally:
        redis.popen.kill()
        redis.popen.wait(timeout=10)
        postgres_server.drop_database(database)
