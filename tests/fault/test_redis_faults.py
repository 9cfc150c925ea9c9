"""The Redis task store under faults: a worker killed mid-task, Redis killed and restarted,
the primary killed under load while Sentinel fails over.

Every server is a throwaway one on a loopback port; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from northpole_proc import NorthpoleFactory, NorthpoleProcess
from northpole_proc import free_port as proc_free_port

from northpole.core.errors import Unavailable
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_store import RedisTaskStore
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.scheduler import partition_of
from northpole.tasks.store import Claim
from redis_servers import (
    cli,
    restart,
    start_redis,
    start_replica,
    start_sentinels,
    unique_namespace,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]

S = TaskState
PARTITIONS = 8
WAIT_S = 30.0  # a bound for failures only
_ids = itertools.count(1_000)

#: A worker process: the task service on the Redis store (with its sweeper) and a
#: worker pool over it, running a handler that journals each attempt.
WORKER = """
import asyncio, os, signal, time
from pathlib import Path

from prometheus_client import CollectorRegistry

from northpole.bus.port import InProcessBus
from northpole.core.clock import SystemClock
from northpole.core.settings import TaskSettings
from northpole.tasks.backends import LocalBackend
from northpole.tasks.handlers import TaskRegistry
from northpole.tasks.redis_store import RedisTaskStore
from northpole.tasks.retry import RetryPolicy
from northpole.tasks.service import TaskService
from northpole.tasks.worker.pool import WorkerPool

JOURNAL = Path(os.environ["ELF_JOURNAL"])
registry = TaskRegistry()


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


async def main():
    settings = TaskSettings(
        partitions=8, lease_ms=1000, worker_ttl_ms=1500, sweep_interval_ms=100, retry_base_ms=100
    )

    async def open_store():
        store = RedisTaskStore(
            os.environ["REDIS_URL"], partitions=8, aging_ms=1000,
            policy=RetryPolicy(100, 2.0, 1000), namespace=os.environ["NAMESPACE"],
        )
        return await store.open()

    service = TaskService(
        settings, open_store=open_store, registry=CollectorRegistry(), clock=SystemClock(),
        bus=InProcessBus(),
    )
    async with service.lifespan():
        pool = WorkerPool(
            registry, LocalBackend(service), group="elves", concurrency=1, prefetch=0,
            lease_s=1.0, poll_wait_s=0.5,
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pool.stop)
        await pool.run()


asyncio.run(main())
"""


def make_task(*, metadata: dict[str, str] | None = None, key: str | None = None) -> Task:
    """A PENDING wrap task available now."""
    task_id = next(_ids)
    now = time.time_ns() // 1_000_000
    return Task(
        id=task_id,
        gift_id=task_id,
        task_type="wrap",
        priority=0,
        dependencies=(),
        max_retries=3,
        deadline_ms=None,
        metadata=dict(metadata or {}),
        idempotency_key=key,
        partition=partition_of(task_id, PARTITIONS),
        state=S.PENDING,
        created_ms=now,
        updated_ms=now,
        available_ms=now,
    )


def store_on(url: str, namespace: str, **options: int) -> RedisTaskStore:
    """A store on ``url`` with the workers' settings."""
    return RedisTaskStore(
        url,
        partitions=PARTITIONS,
        aging_ms=1_000,
        policy=RetryPolicy(100, 2.0, 1_000),
        namespace=namespace,
        **options,
    )


def now_ms() -> int:
    """Wall-clock Unix ms."""
    return time.time_ns() // 1_000_000


class Workers:
    """Worker processes on one Redis and namespace, journaling into one file."""

    def __init__(self, tmp_path: Path, url: str, namespace: str) -> None:
        self.script = tmp_path / "redis_elf.py"
        self.script.write_text(textwrap.dedent(WORKER), encoding="utf-8")
        self.journal = tmp_path / "journal.txt"
        self.journal.touch()
        self.env = {**os.environ, "REDIS_URL": url, "NAMESPACE": namespace}
        self.env["ELF_JOURNAL"] = str(self.journal)
        self.logs = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start one worker process."""
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(self.script)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.processes.append(process)
        return process

    def lines(self) -> list[list[str]]:
        """The journal, one list of words per line."""
        return [line.split() for line in self.journal.read_text("utf-8").splitlines()]

    async def wait_line(self, *words: str) -> list[str]:
        """Wait for a journal line starting with ``words``."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for line in self.lines():
                if line[: len(words)] == list(words):
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no journal line {words}: {self.lines()}\n{self.output()}")

    def output(self) -> str:
        """Every worker's captured output."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs.glob("*.log"))

    def stop_all(self) -> None:
        """Stop (SIGTERM, then SIGKILL) every worker still running."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def test_a_killed_worker_s_task_comes_back_and_completes_once(tmp_path: Path) -> None:
    """After kill -9 of a worker mid-task, the task returns after its lease and another
    worker completes it: attempts 2, exactly one attempt ran to its end."""
    server = start_redis(tmp_path / "redis")
    namespace = unique_namespace("k")
    workers = Workers(tmp_path, server.url, namespace)
    try:
        async with store_on(server.url, namespace) as store:
            task = make_task(metadata={"first_sleep": "30"})
            await store.submit([task], now_ms=now_ms())
            first = workers.start("first")
            started = await workers.wait_line("start", str(task.id), "1")
            assert started[3] == str(first.pid)
            first.kill()
            first.wait(10)
            second = workers.start("second")
            deadline = time.monotonic() + WAIT_S
            while (done := await store.get(task.id)).state is not S.COMPLETED:
                assert time.monotonic() < deadline, f"{done}\n{workers.output()}"
                await asyncio.sleep(0.05)
            assert (done.attempts, done.result) == (2, f"wrapped {task.gift_id}")
            ends = [line for line in workers.lines() if line[0] == "end"]
            assert ends == [["end", str(task.id), "2", str(second.pid)]]
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
    finally:
        workers.stop_all()
        server.stop()


async def test_acknowledged_tasks_survive_kill_9_of_redis_with_fsync_always(
    tmp_path: Path,
) -> None:
    """Redis with appendfsync always, killed and restarted: every acknowledged task is there,
    and held ones still complete (the scripts are loaded again on the new process)."""
    server = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    namespace = unique_namespace("r")
    try:
        async with store_on(server.url, namespace) as store:
            tasks = [make_task(metadata={"n": str(i)}) for i in range(300)]
            for chunk in (tasks[:100], tasks[100:]):
                await store.submit(chunk, now_ms=now_ms())
            held, _ = await store.claim(Claim("w", "g", limit=10, lease_ms=60_000), now_ms=now_ms())
            server.kill()
            with pytest.raises(Unavailable):
                await store.get(tasks[0].id)
            server = restart(server)
            by_id = {t.id: t for t in held}
            for task in tasks:
                stored = await store.get(task.id)
                assert stored == by_id.get(task.id, task)
            for task in held:
                await store.complete(
                    task.id, worker_id="w", fence=task.fence, result="ok", now_ms=now_ms()
                )
            stats = await store.stats(now_ms=now_ms())
            assert sum(d.count for d in stats.depths if d.state is S.PENDING) == 290
            assert sum(d.count for d in stats.depths if d.state is S.COMPLETED) == 10
    finally:
        server.stop()


async def test_acknowledged_submits_survive_a_sentinel_failover_with_wait_1(
    tmp_path: Path,
) -> None:
    """Submitting in a loop with wait_replicas=1 while the primary is killed with -9:
    Sentinel promotes a replica, the store follows it, and every submit that was
    acknowledged is on the new primary."""
    primary = start_redis(tmp_path / "primary")
    replicas = [start_replica(tmp_path / f"replica-{i}", primary) for i in range(2)]
    sentinels = start_sentinels(tmp_path / "sentinels", primary, "elves")
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + "/elves"
    namespace = unique_namespace("f")
    acknowledged: list[Task] = []
    refused = 0
    try:
        async with store_on(url, namespace, wait_replicas=1, wait_timeout_ms=500) as store:
            deadline = time.monotonic() + 60
            killed_at: int | None = None
            for number in itertools.count():
                batch = [make_task(key=f"b{number}-{i}") for i in range(20)]
                while True:  # the same batch again until acknowledged (idempotency keys)
                    assert time.monotonic() < deadline, "no failover within 60 s"
                    try:
                        stored, _ = await store.submit(batch, now_ms=now_ms())
                        break
                    except Unavailable:
                        refused += 1
                        await asyncio.sleep(0.2)
                acknowledged += stored
                if number == 10:
                    primary.kill()
                    killed_at = number
                if killed_at is not None and number >= killed_at + 10:
                    break
            new_port = int(
                cli(sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "elves").split()[1]
            )
            assert new_port in {r.port for r in replicas}
            assert refused > 0, "the failover went unnoticed: the test proves nothing"
            for task in acknowledged:
                assert (await store.get(task.id)).state is S.PENDING
            assert len({t.id for t in acknowledged}) == 21 * 20
    finally:
        for process in (*sentinels, *replicas, primary):
            process.stop()


# -- real processes: `northpole up` on Redis and `northpole worker` -------------------------------

#: Short leases, a quick sweeper and quick retries for the server and its workers.
FAST_QUEUE = {
    "NORTHPOLE_TASKS__LEASE_MS": "1000",
    "NORTHPOLE_TASKS__WORKER_TTL_MS": "1500",
    "NORTHPOLE_TASKS__SWEEP_INTERVAL_MS": "100",
    "NORTHPOLE_TASKS__RETRY_BASE_MS": "100",
}
#: The worker processes' handlers: ``wrap`` journals each attempt's start and end.
PROCESS_HANDLERS = WORKER.split("\n\nasync def main():", 1)[0]


class RedisQueue:
    """``northpole up`` on a throwaway Redis, its tokens, and workers started against it."""

    def __init__(self, procs: NorthpoleFactory, tmp_path: Path) -> None:
        self.procs = procs
        self.redis = start_redis(tmp_path / "redis", "--appendonly", "yes")
        self.env = {**FAST_QUEUE, "NORTHPOLE_TASKS__REDIS_URL": self.redis.url}
        self.data = procs.data_dir()
        self.journal = tmp_path / "journal.txt"
        self.journal.touch()
        self.modules = tmp_path / "modules"
        self.modules.mkdir()
        (self.modules / "elf_handlers.py").write_text(PROCESS_HANDLERS, encoding="utf-8")
        self.server = self.up()
        made = procs.cli("token", "create", "--role", "worker", "--sub", "elf", data_dir=self.data)
        assert made.returncode == 0, made.stderr
        self.worker_token = made.stdout.strip()

    def up(self) -> NorthpoleProcess:
        """Start (or start again) ``northpole up`` on the Redis and wait until it is ready."""
        server = self.procs.spawn(
            "up",
            data_dir=self.data,
            name="up",
            port=proc_free_port(),
            env=self.env,
            token=self.procs.token(self.data),
        )
        server.wait_ready()
        return server

    def worker(self, *args: str, name: str = "worker") -> NorthpoleProcess:
        """Start ``northpole worker --url <server> ... elf_handlers:registry``."""
        path = os.pathsep.join(p for p in (str(self.modules), os.environ.get("PYTHONPATH")) if p)
        env = {
            **self.env,
            "PYTHONPATH": path,
            "NORTHPOLE_TOKEN": self.worker_token,
            "ELF_JOURNAL": str(self.journal),
        }
        return self.procs.spawn(
            "worker",
            "--url",
            self.server.base_url,
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

    def submit(self, count: int, **fields: object) -> list[str]:
        """Submit ``count`` wrap tasks over HTTP; return their ids."""
        body = {
            "tasks": [{"gift_id": str(i + 1), "task_type": "wrap", **fields} for i in range(count)]
        }
        with self.server.client() as client:
            response = client.post("/api/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        return [task["id"] for task in response.json()["tasks"]]

    def states(self, ids: list[str]) -> list[str]:
        """The state of each task, read over HTTP."""
        with self.server.client() as client:
            return [client.get(f"/api/v1/tasks/{i}").json()["state"] for i in ids]

    def wait_states(self, ids: list[str], state: str) -> None:
        """Wait (bounded) until every task is in ``state``."""
        deadline = time.monotonic() + WAIT_S
        while (states := self.states(ids)) != [state] * len(ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"not all {state}: {states}\n{self.procs.report()}")
            time.sleep(0.05)

    def journal_lines(self) -> list[list[str]]:
        """The handler journal, one list of words per line."""
        return [line.split() for line in self.journal.read_text(encoding="utf-8").splitlines()]

    def wait_journal(self, *words: str) -> list[str]:
        """Wait (bounded) for a journal line starting with ``words``."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for line in self.journal_lines():
                if line[: len(words)] == list(words):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no journal line {words}: {self.journal_lines()}")


@pytest.fixture
def redis_queue(procs: NorthpoleFactory, tmp_path: Path) -> Iterator[RedisQueue]:
    """``northpole up`` serving the task queue on a throwaway Redis (stopped at the end)."""
    queue = RedisQueue(procs, tmp_path)
    yield queue
    procs.cleanup()
    queue.redis.stop()


def test_northpole_worker_killed_mid_task_on_redis_completes_it_once(
    redis_queue: RedisQueue,
) -> None:
    """With ``northpole up`` on Redis, a ``northpole worker`` killed -9 mid-task loses the
    task to its lease; a second worker process completes it, and only that attempt ends."""
    [task_id] = redis_queue.submit(1, metadata={"first_sleep": "30"})
    first = redis_queue.worker("--concurrency", "1", "--prefetch", "0", name="first")
    started = redis_queue.wait_journal("start", task_id, "1")
    assert started[3] == str(first.pid)
    assert first.kill() == -signal.SIGKILL
    second = redis_queue.worker("--concurrency", "1", name="second")
    redis_queue.wait_states([task_id], "COMPLETED")
    with redis_queue.server.client() as client:
        task = client.get(f"/api/v1/tasks/{task_id}").json()
    assert (task["attempts"], task["result"]) == (2, "wrapped 1")
    ends = [line for line in redis_queue.journal_lines() if line[:2] == ["end", task_id]]
    assert ends == [["end", task_id, "2", str(second.pid)]]
    assert second.stop(signal.SIGTERM) == 0


def test_a_restarted_queue_server_on_redis_loses_nothing(redis_queue: RedisQueue) -> None:
    """Tasks acknowledged by ``northpole up`` on Redis are all there after the server is
    killed -9 and started again, and a worker then completes every one of them."""
    ids = redis_queue.submit(50)
    assert int(cli(redis_queue.redis.port, "DBSIZE")) > len(ids)  # the records are in Redis
    assert redis_queue.server.kill() == -signal.SIGKILL
    redis_queue.server = redis_queue.up()
    assert redis_queue.states(ids) == ["PENDING"] * len(ids)
    worker = redis_queue.worker("--concurrency", "8")
    redis_queue.wait_states(ids, "COMPLETED")
    assert worker.stop(signal.SIGTERM) == 0
    ended = {line[1] for line in redis_queue.journal_lines() if line[0] == "end"}
    assert ended == set(ids)
