"""Gift ID servers and CLI runs as real processes sharing one data directory."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from northpole_proc import (
    GENERATE_PATH,
    HEALTH_PATH,
    NorthpoleFactory,
    NorthpoleProcess,
    generate,
    id_lines,
    lock_is_free,
    metric_value,
    squash,
)

from northpole.idgen import decode

pytestmark = [pytest.mark.integration]

BATCH = 4096


def _fetch(process: NorthpoleProcess, batches: int) -> list[list[int]]:
    """Ask ``process`` for ``batches`` batches of 4096 on one connection."""
    with process.client() as client:
        return [generate(client, BATCH) for _ in range(batches)]


def test_two_workshops_on_one_data_dir_never_collide(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    servers = {1: procs.serve(1, data_dir=data, wait=False)}
    servers[2] = procs.serve(2, data_dir=data, wait=False)
    for server in servers.values():
        server.wait_ready()

    # Two client threads per server, seven batches each: 57,344 IDs per server.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            (workshop, n): pool.submit(_fetch, server, 7)
            for workshop, server in servers.items()
            for n in range(2)
        }
        results = {key: future.result(timeout=60) for key, future in futures.items()}

    every: list[int] = []
    for (workshop, _), batches in results.items():
        for batch in batches:
            assert len(batch) == BATCH
            assert batch == sorted(batch) and len(set(batch)) == BATCH
            assert {decode(i).workshop_id for i in batch} == {workshop}
            every.extend(batch)
    assert len(every) == 4 * 7 * BATCH
    assert len(set(every)) == len(every), "duplicate IDs across two workshops"

    for server in servers.values():
        with server.client() as client:
            metrics = client.get("/metrics").text
        assert metric_value(metrics, "gift_id_generated_total") == 2 * 7 * BATCH
        assert metric_value(metrics, "gift_id_collisions_total") == 0


def test_a_held_workshop_id_is_refused_to_servers_and_cli(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    first = procs.serve(7, data_dir=data)
    before = first.generate(100)

    second = procs.serve(7, data_dir=data, wait=False)
    status = second.wait_exit()
    assert status != 0, str(second)
    assert "workshop id 7 is in use" in second.output(), str(second)
    assert f"pid {first.pid}" in second.output(), "the message should name the holder"

    # The first server never noticed.
    assert first.alive()
    with first.client() as client:
        assert client.get("/readyz").status_code == 200
        health = client.get(HEALTH_PATH).json()
        assert health["workshop_id"] == 7 and health["status"] == "ok"
        after = generate(client, 100)
    assert min(after) > max(before)
    assert {decode(i).workshop_id for i in after} == {7}

    taken = procs.cli("id", "new", "-n", "3", "--workshop-id", "7", data_dir=data)
    assert taken.returncode == 2, taken
    assert squash("workshop id 7 is in use") in squash(taken.stderr), taken
    assert id_lines(taken.stdout) == []

    free = procs.cli("id", "new", "-n", "3", "--workshop-id", "8", data_dir=data)
    assert free.returncode == 0, free
    ids = id_lines(free.stdout)
    assert len(ids) == 3 and ids == sorted(ids)
    assert {decode(i).workshop_id for i in ids} == {8}
    assert first.alive()


def test_up_serves_docs_openapi_and_metrics(procs: NorthpoleFactory) -> None:
    server = procs.up()
    with server.client() as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()

        schema = client.get("/openapi.json")
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        for path in (GENERATE_PATH, HEALTH_PATH, "/api/v1/gift-id/{id}/decode"):
            assert path in paths, sorted(paths)
        assert "post" in paths[GENERATE_PATH]

        ids = generate(client, 5) + generate(client)
        assert len(set(ids)) == 6

        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metric_value(metrics.text, "gift_id_generated_total") == 6


def test_sigterm_shuts_down_gracefully_and_releases_the_lock(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    first = procs.serve(5, data_dir=data)
    before = first.generate(1000)

    started = time.monotonic()
    status = first.stop(signal.SIGTERM, timeout=10)
    elapsed = time.monotonic() - started
    assert status == 0, f"a graceful stop must exit 0, not {status}\n{first}"
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"

    records = first.log_records()  # every stdout line must be a JSON object
    assert {record.get("service") for record in records} == {"northpole"}
    messages = [record.get("message") for record in records]
    for expected in ("Shutting down", "stopping", "Application shutdown complete."):
        assert expected in messages, messages
    assert lock_is_free(data, 5)

    second = procs.serve(5, data_dir=data)
    after = second.generate(1000)
    assert min(after) > max(before), "a restarted workshop must continue after its last ID"
    assert second.stop() == 0


def test_concurrent_id_new_processes_with_different_workshops(procs: NorthpoleFactory) -> None:
    data = procs.data_dir()
    runs = {
        workshop: procs.spawn(
            "id", "new", "-n", "20000", "--workshop-id", str(workshop), data_dir=data, name="id"
        )
        for workshop in (11, 12)
    }
    every: list[int] = []
    for workshop, run in runs.items():
        assert run.wait_exit(timeout=60) == 0, str(run)
        ids = id_lines(run.stdout())
        assert len(ids) == 20000
        assert ids == sorted(ids)
        assert {decode(i).workshop_id for i in ids} == {workshop}
        every.extend(ids)
    assert len(set(every)) == 40000


def test_id_new_stdout_holds_only_ids(procs: NorthpoleFactory) -> None:
    result = procs.cli("id", "new", "-n", "3", "--workshop-id", "1", data_dir=procs.data_dir())
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.isdigit() for line in lines), lines
