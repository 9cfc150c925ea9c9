"""``northpole up`` killed with SIGKILL around task queue traffic, then restarted.

An acknowledged submit (201) must survive ``kill -9``: the store commits (and
fsyncs) before it answers. Tasks a worker held when the server died come back
to PENDING once their lease runs out on the restarted server, and complete
exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from northpole_proc import NorthpoleFactory, NorthpoleProcess, free_port

pytestmark = [pytest.mark.fault, pytest.mark.integration]

#: A short lease and a quick sweeper, so held tasks come back within a second or two.
FAST_LEASES = {
    "NORTHPOLE_TASKS__LEASE_MS": "1000",
    "NORTHPOLE_TASKS__SWEEP_INTERVAL_MS": "100",
}
WAIT_S = 30.0  # a bound for failures only


def start_up(
    procs: NorthpoleFactory, data: Path, env: Mapping[str, str] | None = None
) -> NorthpoleProcess:
    """Start ``northpole up`` on ``data`` on a free port and wait until it is ready."""
    server = procs.spawn(
        "up", data_dir=data, name="up", port=free_port(), env=env, token=procs.token(data)
    )
    server.wait_ready()
    return server


def worker_headers(procs: NorthpoleFactory, data: Path) -> dict[str, str]:
    """Return an Authorization header with a worker token for ``data``."""
    made = procs.cli("token", "create", "--role", "worker", "--sub", "elf", data_dir=data)
    assert made.returncode == 0, made.stderr
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


def read_tasks(server: NorthpoleProcess, ids: list[str]) -> list[dict[str, Any]]:
    """GET every task in ``ids`` (each must exist)."""
    with server.client() as client:
        answers = [client.get(f"/api/v1/tasks/{task_id}") for task_id in ids]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.is_error]
    return [a.json() for a in answers]


@pytest.mark.parametrize("count", [1, 1000], ids=["single", "batch-1000"])
def test_acknowledged_submit_survives_kill_9(procs: NorthpoleFactory, count: int) -> None:
    """Every task of a submit answered 201 is there, PENDING, after kill -9 and a restart."""
    data = procs.data_dir()
    server = start_up(procs, data)
    if count == 1:
        body: dict[str, Any] = {"gift_id": "7", "task_type": "wrap", "metadata": {"to": "Ada"}}
    else:
        body = {"tasks": [{"gift_id": str(g), "task_type": "wrap"} for g in range(count)]}
    with server.client() as client:
        response = client.post("/api/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        assert server.kill() == -signal.SIGKILL  # at once, before anything else can happen
    answer = response.json()
    acknowledged = answer["tasks"] if count > 1 else [answer]
    restarted = start_up(procs, data)
    stored = read_tasks(restarted, [t["id"] for t in acknowledged])
    assert stored == acknowledged  # the same tasks, all PENDING, untouched
    assert {t["state"] for t in stored} == {"PENDING"}
    with restarted.client() as client:
        depths = client.get("/api/v1/queues").json()["depths"]
    assert sum(row["count"] for row in depths) == count


def test_tasks_held_when_the_server_dies_come_back_and_complete_once(
    procs: NorthpoleFactory,
) -> None:
    """Tasks a worker holds when the server is killed are PENDING again after the lease on
    the restarted server, are claimed anew with a higher fence and complete exactly once."""
    data = procs.data_dir()
    server = start_up(procs, data, FAST_LEASES)
    headers = worker_headers(procs, data)
    body = {"tasks": [{"gift_id": str(g), "task_type": "wrap"} for g in range(5)]}
    with server.client() as client:
        response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    ids = sorted(t["id"] for t in response.json()["tasks"])
    with httpx.Client(base_url=server.base_url, headers=headers, trust_env=False) as old:
        claimed = old.post("/api/v1/workers/elf-old/claim", json={"limit": 5}).json()["tasks"]
        assert sorted(t["id"] for t in claimed) == ids
        started = [{"id": t["id"], "fence": t["fence"]} for t in claimed[:2]]
        beat = old.post("/api/v1/workers/elf-old/heartbeat", json={"started": started})
        assert beat.status_code == 200, beat.text
    assert server.kill() == -signal.SIGKILL

    restarted = start_up(procs, data, FAST_LEASES)
    deadline = time.monotonic() + WAIT_S
    while True:
        tasks = read_tasks(restarted, ids)
        if all(t["state"] == "PENDING" for t in tasks):
            break
        assert time.monotonic() < deadline, f"not all PENDING: {tasks}\n{procs.report()}"
        time.sleep(0.1)
    for returned in tasks:
        assert returned["attempts"] == 1
        assert returned["retry_count"] == 1
        assert returned["last_error"].startswith("lease_expired")
        assert returned["worker_id"] is None

    with httpx.Client(base_url=restarted.base_url, headers=headers, trust_env=False) as new:
        for held in claimed:  # the old holder may not complete what it lost
            late = new.post(
                f"/api/v1/tasks/{held['id']}/complete",
                json={"worker_id": "elf-old", "fence": held["fence"], "result": "late"},
            )
            assert late.status_code == 409, late.text
            assert late.json()["error"]["code"] == "stale_fence"
        again: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while len(again) < len(ids):  # retries back off up to a second
            assert time.monotonic() < deadline, f"claimed only {again}"
            answer = new.post("/api/v1/workers/elf-new/claim", json={"limit": 5, "wait_s": 2})
            assert answer.status_code == 200, answer.text
            again += answer.json()["tasks"]
        assert sorted(t["id"] for t in again) == ids
        assert {(t["fence"], t["attempts"]) for t in again} == {(2, 2)}
        acks = [{"id": t["id"], "fence": t["fence"], "result": "on time"} for t in again]
        results = new.post("/api/v1/workers/elf-new/ack", json={"completed": acks}).json()
        assert all(r["ok"] for r in results["results"]), results
        twice = new.post("/api/v1/workers/elf-new/ack", json={"completed": acks}).json()
        assert not any(r["ok"] for r in twice["results"]), twice
    done = read_tasks(restarted, ids)
    assert {(t["state"], t["result"], t["attempts"]) for t in done} == {("COMPLETED", "on time", 2)}
