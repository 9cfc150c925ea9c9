"""``northpole worker`` processes against a real ``northpole up`` over HTTP.

The handler module is written to the test's tmp dir and put on the worker's
PYTHONPATH; it appends ``start``/``end`` lines to a journal file so a test can
see which process ran which attempt. Leases are short (1 s) so a killed
worker's task comes back quickly.

The kill -9 test runs its first worker without prefetch: a long-poll claim
left open by a killed worker is not noticed by the server, which may still hand
it the task (an extra attempt that waits out one more lease).
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from northpole_proc import NorthpoleFactory, NorthpoleProcess, free_port

pytestmark = pytest.mark.integration

#: Short leases, a quick sweeper and quick retries, for the server and the workers alike.
FAST_LEASES = {
    "NORTHPOLE_TASKS__LEASE_MS": "1000",
    "NORTHPOLE_TASKS__WORKER_TTL_MS": "1500",
    "NORTHPOLE_TASKS__SWEEP_INTERVAL_MS": "100",
    "NORTHPOLE_TASKS__RETRY_BASE_MS": "100",
}
WAIT_S = 30.0

HANDLERS = """
import os
import time
from pathlib import Path

from northpole.tasks.handlers import TaskRegistry

registry = TaskRegistry()
JOURNAL = Path(os.environ["ELF_JOURNAL"])


def note(*words):
    with JOURNAL.open("a", encoding="utf-8") as out:
        out.write(" ".join(str(w) for w in words) + "\\n")


@registry.handler("wrap")
def wrap(ctx):
    note("start", ctx.task_id, ctx.attempt, os.getpid())
    if ctx.attempt == 1:
        time.sleep(float(ctx.metadata.get("first_sleep", "0")))
    note("end", ctx.task_id, ctx.attempt, os.getpid())
    return f"wrapped {ctx.gift_id}"
"""


class Elves:
    """A server plus the means to submit tasks and start workers against it."""

    def __init__(self, procs: NorthpoleFactory, tmp_path: Path) -> None:
        self.procs = procs
        self.data = procs.data_dir()
        self.journal = tmp_path / "journal.txt"
        self.journal.touch()
        modules = tmp_path / "modules"
        modules.mkdir()
        (modules / "elf_handlers.py").write_text(textwrap.dedent(HANDLERS), encoding="utf-8")
        self.modules = modules
        self.server = procs.spawn(
            "up",
            data_dir=self.data,
            name="up",
            port=free_port(),
            env=FAST_LEASES,
            token=procs.token(self.data),
        )
        self.server.wait_ready()
        made = procs.cli("token", "create", "--role", "worker", "--sub", "elf", data_dir=self.data)
        assert made.returncode == 0, made.stderr
        self.worker_token = made.stdout.strip()
        #: Workers expected to be running; waits fail fast if one of them exits.
        self.running: list[NorthpoleProcess] = []

    def worker(self, *args: str, name: str = "worker", local: bool = False) -> NorthpoleProcess:
        """Start ``northpole worker --url <server> ... elf_handlers:registry``.

        With ``local`` the worker gets no URL and opens the server's data directory itself.
        """
        path = os.pathsep.join(p for p in (str(self.modules), os.environ.get("PYTHONPATH")) if p)
        env = {
            **FAST_LEASES,
            "PYTHONPATH": path,
            "NORTHPOLE_TOKEN": self.worker_token,
            "ELF_JOURNAL": str(self.journal),
        }
        where = [] if local else ["--url", self.server.base_url]
        process = self.procs.spawn(
            "worker",
            *where,
            "--group",
            "elves",
            "--poll-wait-s",
            "1",
            *args,
            "elf_handlers:registry",
            data_dir=self.data,
            name=name,
            env=env,
        )
        self.running.append(process)
        return process

    def check_running(self) -> None:
        """Fail at once if a worker that should be running has exited."""
        for process in self.running:
            if not process.alive():
                raise AssertionError(f"{process.name} exited early\n{self.procs.report()}")

    def submit(self, count: int, **fields: Any) -> list[str]:
        """Submit ``count`` wrap tasks (gift ids 1..count) and return their ids."""
        body = {
            "tasks": [{"gift_id": str(i + 1), "task_type": "wrap", **fields} for i in range(count)]
        }
        with self.server.client() as client:
            response = client.post("/api/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        return [task["id"] for task in response.json()["tasks"]]

    def task(self, task_id: str) -> dict[str, Any]:
        """Read one task."""
        with self.server.client() as client:
            response = client.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_states(self, ids: list[str], state: str, timeout: float = WAIT_S) -> None:
        """Wait until every task in ``ids`` is in ``state``."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.task(task_id)["state"] for task_id in ids]
            if all(s == state for s in states):
                return
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"tasks not all {state}: {states}\n{self.procs.report()}")
            time.sleep(0.05)

    def journal_lines(self) -> list[list[str]]:
        """The handler journal, one list of words per line."""
        return [line.split() for line in self.journal.read_text(encoding="utf-8").splitlines()]

    def wait_journal(self, *words: str, timeout: float = WAIT_S) -> list[str]:
        """Wait for a journal line starting with ``words`` and return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.journal_lines():
                if line[: len(words)] == list(words):
                    return line
            self.check_running()
            time.sleep(0.02)
        raise AssertionError(f"no journal line {words}: {self.journal_lines()}")


@pytest.fixture
def elves(procs: NorthpoleFactory, tmp_path: Path) -> Elves:
    """A running ``northpole up`` with short leases and a handler module for workers."""
    return Elves(procs, tmp_path)


def test_worker_completes_every_submitted_task(elves: Elves) -> None:
    """Twenty tasks submitted over HTTP are all COMPLETED by one worker, with results,
    JSON logs bound to each task and the worker's metrics on --metrics-port."""
    ids = elves.submit(20)
    metrics_port = free_port()
    worker = elves.worker("--concurrency", "4", "--metrics-port", str(metrics_port))
    elves.wait_states(ids, "COMPLETED")
    with httpx.Client(trust_env=False) as client:
        metrics = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'worker_handler_duration_seconds_count{task_type="wrap"} 20.0' in metrics
    assert "worker_busy_ratio{worker_id=" in metrics
    tasks = [elves.task(task_id) for task_id in ids]
    assert sorted(t["result"] for t in tasks) == sorted(f"wrapped {i}" for i in range(1, 21))
    assert {t["attempts"] for t in tasks} == {1}
    assert worker.stop(signal.SIGTERM) == 0
    assert "northpole worker" in worker.stderr()
    messages = worker.log_messages()  # stdout is JSON lines only
    assert "worker started" in messages and "worker stopped" in messages
    finished = [r for r in worker.log_records() if r.get("message") == "task finished"]
    assert {r["task_id"] for r in finished} == set(ids)
    assert all(r["gift_id"].isdigit() and r["service"] == "northpole-worker" for r in finished)


def test_killed_workers_task_is_completed_once_by_another_worker(elves: Elves) -> None:
    """After kill -9 mid-task the task comes back after its lease and a second worker
    completes it: attempts == 2 and exactly one attempt ran to its end."""
    [task_id] = elves.submit(1, metadata={"first_sleep": "30"})
    # No prefetch: no claim of the first worker is open when it dies (see the module doc).
    first = elves.worker("--concurrency", "1", "--prefetch", "0", name="first")
    started = elves.wait_journal("start", task_id, "1")
    assert started[3] == str(first.pid)
    assert first.kill() == -signal.SIGKILL
    elves.running.remove(first)
    second = elves.worker("--concurrency", "1", name="second")
    elves.wait_states([task_id], "COMPLETED")
    task = elves.task(task_id)
    assert task["attempts"] == 2
    assert task["result"] == "wrapped 1"
    ends = [line for line in elves.journal_lines() if line[:2] == ["end", task_id]]
    assert ends == [["end", task_id, "2", str(second.pid)]]
    assert second.stop(signal.SIGTERM) == 0


def test_sigterm_drains_the_running_task_then_exits_zero(elves: Elves) -> None:
    """SIGTERM while a handler runs lets it finish and report before the worker exits 0."""
    [task_id] = elves.submit(1, metadata={"first_sleep": "1.5"})
    worker = elves.worker("--concurrency", "2")
    elves.wait_journal("start", task_id, "1")
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    task = elves.task(task_id)
    assert (task["state"], task["attempts"], task["result"]) == ("COMPLETED", 1, "wrapped 1")
    assert "draining" in worker.log_messages()


def test_local_worker_opens_the_servers_data_directory(elves: Elves) -> None:
    """Without --url the worker claims from the SQLite file of the server's data directory."""
    ids = elves.submit(5)
    worker = elves.worker("--concurrency", "2", local=True)
    elves.wait_states(ids, "COMPLETED")
    assert {elves.task(task_id)["result"] for task_id in ids} == {
        f"wrapped {i}" for i in range(1, 6)
    }
    assert worker.stop(signal.SIGTERM) == 0
    assert "(local)" in worker.stderr()
