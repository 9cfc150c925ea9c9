"""The task queue of a real ``northpole up``, driven over HTTP by a hand-written worker.

The test plays a worker written in another language: plain HTTP calls to
claim (long poll), heartbeat and batch-acknowledge, no northpole client code.
It checks that a build -> wrap -> load chain per gift runs in dependency order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from northpole_proc import NorthpoleFactory, NorthpoleProcess, free_port

pytestmark = pytest.mark.integration

GIFTS = 50
CHAIN = ("build", "wrap", "load")
WAIT_S = 60.0  # a bound for failures only: it takes a few seconds


def start_up(procs: NorthpoleFactory, data: Path) -> NorthpoleProcess:
    """Start ``northpole up`` on a free port and wait until it is ready."""
    server = procs.spawn("up", data_dir=data, name="up", port=free_port(), token=procs.token(data))
    server.wait_ready()
    return server


def worker_client(procs: NorthpoleFactory, server: NorthpoleProcess) -> httpx.Client:
    """Return an HTTP client carrying a worker token for the server's data directory."""
    made = procs.cli(
        "token", "create", "--role", "worker", "--sub", "elf", data_dir=server.data_dir
    )
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30, trust_env=False)


class HandWrittenWorker:
    """Claims, heartbeats and acknowledges over raw HTTP, noting what it did in a journal."""

    def __init__(self, client: httpx.Client, worker_id: str, journal: list[tuple[str, str]]):
        self.client = client
        self.worker_id = worker_id
        self.journal = journal  # ("claimed" | "done", task id), in real order

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(f"/api/v1/workers/{self.worker_id}/{route}", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def step(self) -> int:
        """Claim a handful of tasks, report them started, then complete them all in one ack."""
        claimed = self._post("claim", {"group": "elves", "limit": 16, "wait_s": 1})["tasks"]
        if not claimed:
            return 0
        held = [{"id": t["id"], "fence": t["fence"]} for t in claimed]
        self.journal.extend(("claimed", t["id"]) for t in claimed)
        beat = self._post(
            "heartbeat", {"group": "elves", "concurrency": 16, "started": held, "holding": held}
        )
        assert beat["cancel"] == []
        acks = [
            {**h, "result": f"{t['task_type']} {t['gift_id']}"}
            for h, t in zip(held, claimed, strict=True)
        ]
        results = self._post("ack", {"completed": acks})["results"]
        assert all(r["ok"] and r["state"] == "COMPLETED" for r in results), results
        self.journal.extend(("done", t["id"]) for t in claimed)
        return len(claimed)


def chain_batch() -> list[dict[str, Any]]:
    """Return build -> wrap -> load for every gift, linked by batch refs."""
    batch: list[dict[str, Any]] = []
    for gift in range(1, GIFTS + 1):
        batch.append({"gift_id": str(gift), "task_type": "build", "ref": f"b{gift}"})
        batch.append(
            {
                "gift_id": str(gift),
                "task_type": "wrap",
                "ref": f"w{gift}",
                "dependencies": [f"b{gift}"],
            }
        )
        batch.append({"gift_id": str(gift), "task_type": "load", "dependencies": [f"w{gift}"]})
    return batch


def test_gift_chains_complete_in_dependency_order(procs: NorthpoleFactory) -> None:
    """150 tasks (build -> wrap -> load for 50 gifts) all complete, none claimed before its
    dependency completed."""
    server = start_up(procs, procs.data_dir())
    with server.client() as operator:
        response = operator.post("/api/v1/tasks", json={"tasks": chain_batch()})
    assert response.status_code == 201, response.text
    submitted = response.json()["tasks"]
    assert len(submitted) == GIFTS * len(CHAIN)
    by_id = {t["id"]: t for t in submitted}
    for gift in range(GIFTS):
        build, wrap, load = submitted[3 * gift : 3 * gift + 3]
        assert (wrap["dependencies"], load["dependencies"]) == ([build["id"]], [wrap["id"]])
    journal: list[tuple[str, str]] = []
    with worker_client(procs, server) as client:
        workers = [HandWrittenWorker(client, f"elf-{n}", journal) for n in "ab"]
        done = 0
        deadline = time.monotonic() + WAIT_S
        while done < len(submitted):
            assert time.monotonic() < deadline, f"only {done} tasks done\n{procs.report()}"
            for worker in workers:
                done += worker.step()
        tasks = {task_id: client.get(f"/api/v1/tasks/{task_id}").json() for task_id in by_id}
        queues = client.get("/api/v1/queues").json()
    assert done == len(submitted)
    claimed_at = {task_id: i for i, (what, task_id) in enumerate(journal) if what == "claimed"}
    done_at = {task_id: i for i, (what, task_id) in enumerate(journal) if what == "done"}
    assert len(claimed_at) == len(done_at) == len(submitted)  # each handed out exactly once
    assert {t["state"] for t in tasks.values()} == {"COMPLETED"}
    assert {t["attempts"] for t in tasks.values()} == {1}
    for task_id, task in tasks.items():
        assert task["result"] == f"{by_id[task_id]['task_type']} {by_id[task_id]['gift_id']}"
        for dependency in task["dependencies"]:
            assert done_at[dependency] < claimed_at[task_id]
            assert tasks[dependency]["finished_at"] <= task["started_at"]
    assert {row["state"] for row in queues["depths"]} == {"COMPLETED"}
    assert sum(row["count"] for row in queues["depths"]) == len(submitted)
    assert {g["group"]: g["workers"] for g in queues["groups"]} == {"elves": 2}
