"""Benchmark of the task queue on Redis (cluster edition) against Python peers, in one run.

Run from the repository root::

    .venv/bin/python bench/queue_redis.py            # everything, about 4 minutes
    .venv/bin/python bench/queue_redis.py --quick    # a short smoke run
    .venv/bin/python bench/queue_redis.py --only northpole --no-cluster

One throwaway ``redis-server`` on a free loopback port serves every system
(ours and the peers, each in a database of its own, flushed between cases);
a 3-master Redis Cluster is started afterwards for our scaling figures. Peers
(``--peers``, default all that are installed): Dramatiq, Celery, RQ, arq and
taskiq, each with its documented settings for throughput (listed in
``PEER_SETTINGS`` and printed with the results). Every system runs the same
workload through its own real worker processes:

``submit``
    Tasks enqueued per second by this process, in the system's fastest
    documented way (batches of ``--batch`` where it has a batch call).
    Ours twice: ``northpole.submit_store`` calls ``RedisTaskStore.submit``
    in-process with ``--submitters`` concurrent batches (tasks built before
    the clock starts: the store's own rate), and ``northpole.submit_http``
    posts the same batches to ``northpole up`` (the HTTP edge: JSON,
    validation, ids, the store).
``lifecycle_w1``, ``lifecycle_w2``
    ``--tasks`` no-op tasks enqueued first, then 1 (2) worker processes drain
    them. The rate is tasks over the time from the first handler start to
    the last handler end, as the handlers themselves record it (a probe
    imported by every system's handler module counts calls and writes the
    count and times to a file per process every 50 ms), so it is the same
    clock for every system and process start-up is not in it. Ours with
    workers talking to Redis themselves (``northpole worker`` with
    ``NORTHPOLE_TASKS__REDIS_URL``, ``direct``) and through ``northpole up``
    (``northpole worker --url``, ``http``).
``latency``
    Single tasks enqueued at a steady ``--rate`` per second (open loop) for
    ``--seconds`` with 2 workers running; each task carries its send time and
    the probe records the handler's start minus it: p50, p90, p99.
``worker_rss``
    The largest peak RSS (VmHWM) of one worker process in the cases above.

Every line has ``system``, ``case``, ``n``, ``seconds``, ``rate``; a summary
table (ours against the best peer per case, and the ratio) goes to stderr
with the targets of issue 7. Loopback only; every wait is bounded.

Our submit and lifecycle lines also carry the Redis CPU per task (``INFO
cpu`` of every server before and after): all servers together and the
busiest one. On the 3-master cluster the busiest master's share against the
single server's tells how far Redis-bound throughput scales when each master
has a core of its own, which the rates on this shared machine cannot show.

This process collects its youngest GC generation as ``northpole up`` does
(every :data:`~northpole.core.server.GC_YOUNG_THRESHOLD` allocations, not
Python's 700), for every system's producer alike: with the default the
collector walks the prebuilt batches over and over and, measured, takes a
third of the in-process submit's time, which a server does not pay.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's ``queue`` (which redis imports):
# keep this directory last on the path.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.append(str(_BENCH_DIR))
sys.path.append(str(_BENCH_DIR.parent / "tests"))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
from rich.table import Table  # noqa: E402

from _common import (  # noqa: E402
    child_pids,
    console,
    emit,
    mint_token,
    peak_rss_mb,
    serve,
    venv_tool,
)
from northpole.core.server import GC_YOUNG_THRESHOLD  # noqa: E402
from northpole.core.settings import Settings  # noqa: E402
from northpole.tasks.model import Task, TaskState  # noqa: E402
from northpole.tasks.redis_store import RedisTaskStore  # noqa: E402
from northpole.tasks.retry import RetryPolicy  # noqa: E402
from northpole.tasks.scheduler import partition_of  # noqa: E402
from redis_servers import start_cluster, start_redis  # noqa: E402

TARGETS = {"submit": 100_000.0, "lifecycle_w2": 20_000.0, "latency_p99_ms": 10.0, "rss": 100.0}
#: The rows the targets are measured on: the store's own submit rate, and workers that
#: talk to Redis themselves as the peers' do (the HTTP rows are shown without a target).
TARGET_ROWS = {("submit_store", None), ("lifecycle_w2", "direct"), ("latency", "direct")}
PEERS = ("dramatiq", "celery", "rq", "arq", "taskiq")
PEER_MODULES = {"dramatiq": "dramatiq", "celery": "celery", "rq": "rq", "arq": "arq"}
PEER_MODULES["taskiq"] = "taskiq_redis"
NOOP = "bench_noop"
STAMP = "bench_stamp"
GROUP = "bench"
#: Each peer's settings for throughput, as documented by the peer.
PEER_SETTINGS = {
    "dramatiq": "RedisBroker; `dramatiq --processes 1 --threads 8` per worker process",
    "celery": "Redis broker, `worker --pool solo` per process, prefetch multiplier 256, "
    "ignore results, no gossip/mingle/heartbeat",
    "rq": "`rq worker --worker-class rq.worker.SimpleWorker` (no fork per job), "
    "enqueue_many, result_ttl 0",
    "arq": "max_jobs 500, keep_result 0, poll_delay 0.01 s",
    "taskiq": "taskiq-redis ListQueueBroker, `taskiq worker --workers 1 --max-async-tasks 500`",
    "northpole": "`northpole worker --concurrency 500`; claims of 500, batch acks",
}

# -- the probe every handler module imports ------------------------------------------------

PROBE = '''"""Counts handler calls and writes count and times to BENCH_PROBE_DIR/<pid>.cnt."""
import itertools, os, threading, time

_DIR = os.environ["BENCH_PROBE_DIR"]
_lock = threading.Lock()
_state = {"n": 0, "first": 0.0, "last": 0.0}
_lat = []
_thread = []


def _flush():
    path = os.path.join(_DIR, str(os.getpid()))
    with _lock:
        lat, _lat[:] = list(_lat), []
        line = f"{_state['n']} {_state['first']} {_state['last']}"
    if lat:
        with open(path + ".lat", "a") as out:
            out.write("".join(f"{x}\\n" for x in lat))
    with open(path + ".tmp", "w") as out:
        out.write(line)
    os.replace(path + ".tmp", path + ".cnt")


def _writer():
    while True:
        time.sleep(0.05)
        _flush()


def probe(sent_ns=None):
    now = time.time()
    with _lock:
        if not _thread:
            _state["first"] = now
            _thread.append(threading.Thread(target=_writer, daemon=True))
            _thread[0].start()
        _state["n"] += 1
        _state["last"] = now
        if sent_ns:
            _lat.append((time.time_ns() - int(sent_ns)) / 1e6)
'''

HANDLERS = {
    "northpole": f'''from bench_probe import probe
from northpole.tasks.handlers import TaskContext, TaskRegistry

registry = TaskRegistry()


@registry.handler("{NOOP}")
async def noop(ctx: TaskContext) -> None:
    probe()


@registry.handler("{STAMP}")
async def stamp(ctx: TaskContext) -> None:
    probe(ctx.metadata["sent"])
''',
    "dramatiq": """import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from bench_probe import probe

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(sent=None):
    probe(sent)
""",
    "celery": """import os
from celery import Celery
from bench_probe import probe

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=256,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(sent=None):
    probe(sent)
""",
    "rq": """from bench_probe import probe


def noop(sent=None):
    probe(sent)
""",
    "arq": """import os
from arq.connections import RedisSettings
from bench_probe import probe


async def noop(ctx, sent=None):
    probe(sent)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
    max_jobs = 500
    keep_result = 0
    poll_delay = 0.01
    handle_signals = True
""",
    "taskiq": """import os
from taskiq_redis import ListQueueBroker
from bench_probe import probe

broker = ListQueueBroker(os.environ["BENCH_REDIS_URL"], queue_name="bench")


@broker.task(task_name="noop")
async def noop(sent=None):
    probe(sent)
""",
}


def worker_argv(system: str, url: str, queue_url: str | None = None) -> list[str]:
    """The command line of one worker process of ``system`` (ours: ``--url queue_url``)."""
    module = f"bench_{system}"
    if system == "northpole":
        argv = [venv_tool("northpole"), "worker", "--group", GROUP, "--concurrency", "500"]
        if queue_url is not None:
            argv += ["--url", queue_url]
        return [*argv, "--drain-timeout-s", "5", f"{module}:registry"]
    if system == "dramatiq":
        return [venv_tool("dramatiq"), module, "--processes", "1", "--threads", "8"]
    if system == "celery":
        argv = [venv_tool("celery"), "-A", module, "worker", "--pool", "solo", "-Q", "bench"]
        return [
            *argv,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
    if system == "rq":
        argv = [venv_tool("rq"), "worker", "--worker-class", "rq.worker.SimpleWorker"]
        return [*argv, "--url", url, "--quiet", "bench"]
    if system == "arq":
        return [venv_tool("arq"), f"{module}.WorkerSettings"]
    if system == "taskiq":
        argv = [venv_tool("taskiq"), "worker", f"{module}:broker", "--workers", "1"]
        return [*argv, "--max-async-tasks", "500", "--no-configure-logging"]
    raise ValueError(system)


# -- options and the run's results ------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What to run and how hard."""

    quick: bool
    only: tuple[str, ...]
    tasks: int
    batch: int
    submitters: int
    rate: int
    seconds: float
    cluster: bool
    cases: tuple[str, ...]
    our_modes: tuple[str, ...]
    timeout_s: float


@dataclass
class Run:
    """Options, the workspace and the results so far."""

    opts: Options
    home: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False

    def report(self, record: dict[str, Any]) -> None:
        """Print one result line (with the machine's load: others' work skews it)."""
        record["loadavg_1m"] = round(os.getloadavg()[0], 2)
        emit(record)
        self.results.append(record)

    def fail(self, system: str, case: str, exc: BaseException) -> None:
        """Report a case that could not run."""
        console.print(f"[red]{system} {case} failed:[/]")
        console.print("".join(traceback.format_exception(exc)), markup=False)
        self.report({"system": system, "case": case, "error": f"{type(exc).__name__}: {exc}"})
        self.failed = True


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """Nearest-rank p50, p90, p99 and max (``None`` when empty)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": rank(1.0)}


def record(system: str, case: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """The common part of a result line (``extra`` appended)."""
    rate = round(n / seconds, 1) if seconds > 0 else None
    out = {"system": system, "case": case, "n": n, "seconds": round(seconds, 3), "rate": rate}
    return {**out, **extra}


# -- worker processes and their probes --------------------------------------------------------


@dataclass
class Fleet:
    """Worker processes of one system, and where their probes write."""

    procs: list[subprocess.Popen[bytes]]
    probe_dir: Path
    logs: list[Path]
    peaks: dict[int, float] = field(default_factory=dict)

    def sample_rss(self) -> None:
        """Read the peak RSS of every worker process (and its children: pool processes)."""
        for proc in self.procs:
            for pid in (proc.pid, *child_pids(proc.pid)):
                if (peak := peak_rss_mb(pid)) is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def counts(self) -> tuple[int, float | None, float | None]:
        """Handler calls so far, and the first start and last end over all processes."""
        n, first, last = 0, math.inf, 0.0
        for path in self.probe_dir.glob("*.cnt"):
            with contextlib.suppress(ValueError, OSError):
                count, a, b = path.read_text().split()
                n += int(count)
                first, last = min(first, float(a)), max(last, float(b))
        return n, (None if first == math.inf else first), (last or None)

    def latencies(self) -> list[float]:
        """Every submit-to-start latency the probes recorded (ms)."""
        out: list[float] = []
        for path in self.probe_dir.glob("*.lat"):
            out += [float(x) for x in path.read_text().split()]
        return out

    def check_alive(self) -> None:
        """Raise if a worker exited, with the end of its log."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2_000:]
                raise RuntimeError(f"worker pid {proc.pid} exited {proc.returncode}:\n{tail}")


@contextlib.contextmanager
def fleet(
    run: Run,
    system: str,
    count: int,
    url: str,
    env: dict[str, str],
    label: str,
    queue_url: str | None = None,
) -> Iterator[Fleet]:
    """Start ``count`` worker processes of ``system``; stop them (SIGTERM, then SIGKILL)."""
    probe_dir = run.home / f"probe-{system}-{label}-{time.monotonic_ns()}"
    probe_dir.mkdir()
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(run.home), os.environ.get("PYTHONPATH")) if p
        ),
        "BENCH_PROBE_DIR": str(probe_dir),
        "BENCH_REDIS_URL": url,
        **env,
    }
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for k in range(count):
            log = probe_dir / f"worker-{k}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        worker_argv(system, url, queue_url),
                        env=full_env,
                        cwd=run.home,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            logs.append(log)
        yield Fleet(procs, probe_dir, logs)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_done(workers: Fleet, total: int, timeout_s: float) -> tuple[int, float, bool]:
    """Wait until the probes counted ``total`` calls; return count, seconds, timed out."""
    deadline = time.monotonic() + timeout_s
    n, first, last = 0, None, None
    while time.monotonic() < deadline:
        workers.sample_rss()
        n, first, last = workers.counts()
        if n >= total:
            break
        workers.check_alive()
        time.sleep(0.05)
    seconds = (last - first) if first is not None and last is not None else 0.0
    return n, seconds, n < total


# -- our system -----------------------------------------------------------------------------

_ids = itertools.count(10**12)


def our_tasks(count: int, task_type: str, now: int, partitions: int, **meta: str) -> list[Task]:
    """PENDING tasks as ``TaskService`` builds them (fresh ids)."""
    out = []
    for _ in range(count):
        task_id = next(_ids)
        out.append(
            Task(
                id=task_id,
                gift_id=task_id,
                task_type=task_type,
                priority=0,
                dependencies=(),
                max_retries=3,
                deadline_ms=None,
                metadata=dict(meta),
                idempotency_key=None,
                partition=partition_of(task_id, partitions),
                state=TaskState.PENDING,
                created_ms=now,
                updated_ms=now,
                available_ms=now,
            )
        )
    return out


def node_clients(url: str) -> list[redis.Redis]:
    """A client per server of ``url``: every master of a cluster, or the one server."""
    if not url.startswith("redis+cluster://"):
        return [redis.Redis.from_url(url)]
    out = []
    for node in url.removeprefix("redis+cluster://").split(","):
        host, port = node.rsplit(":", 1)
        out.append(redis.Redis(host=host, port=int(port)))
    return out


def redis_cpu(url: str) -> list[float]:
    """CPU seconds (user + system, ``INFO cpu``) each server of ``url`` has used so far."""
    out = []
    for client in node_clients(url):
        with contextlib.closing(client):
            info = client.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def cpu_fields(before: list[float], after: list[float], n: int) -> dict[str, Any]:
    """Redis CPU per task over a case: all servers together, and the busiest one.

    On a cluster the busiest master's figure against the single server's is how far
    Redis-bound throughput scales once each master has a core of its own (here the
    masters share the machine's two cores with everything else).
    """
    used = [b - a for a, b in zip(before, after, strict=True)]
    per_task = 1e6 / max(n, 1)
    return {
        "redis_cpu_us_per_task": round(sum(used) * per_task, 2),
        "busiest_redis_cpu_us_per_task": round(max(used) * per_task, 2),
    }


def now_ms() -> int:
    """Wall-clock Unix ms."""
    return time.time_ns() // 1_000_000


def our_store(url: str) -> RedisTaskStore:
    """A store as ``northpole up`` builds it from the default settings."""
    tasks = Settings().tasks
    return RedisTaskStore(
        url, partitions=tasks.partitions, aging_ms=tasks.aging_ms, policy=RetryPolicy()
    )


async def our_submit_store(run: Run, url: str) -> dict[str, Any]:
    """``RedisTaskStore.submit`` in-process, ``--submitters`` batches at a time."""
    opts = run.opts
    partitions = Settings().tasks.partitions
    batches = [
        our_tasks(opts.batch, NOOP, now_ms(), partitions)
        for _ in range(max(1, opts.tasks // opts.batch))
    ]
    total = sum(len(b) for b in batches)
    async with our_store(url) as store:
        todo = list(batches)
        cpu = redis_cpu(url)
        start = time.perf_counter()

        async def submitter() -> None:
            while todo:
                await store.submit(todo.pop(), now_ms=now_ms())

        await asyncio.gather(*(submitter() for _ in range(opts.submitters)))
        seconds = time.perf_counter() - start
        used = cpu_fields(cpu, redis_cpu(url), total)
    return record("northpole", "submit_store", total, seconds, batch=opts.batch, **used)


async def our_submit_http(run: Run, url: str) -> dict[str, Any]:
    """Batches posted to ``northpole up`` on this Redis from ``--submitters`` clients."""
    opts = run.opts
    count = max(1, opts.tasks // opts.batch)
    bodies = []
    for _ in range(count):
        items = [{"gift_id": str(next(_ids)), "task_type": NOOP} for _ in range(opts.batch)]
        bodies.append(orjson.dumps({"tasks": items}))
    env = {"NORTHPOLE_TASKS__REDIS_URL": url}
    with serve([venv_tool("northpole"), "up"], extra_env=env) as server:
        token = mint_token(server, "operator", "bench")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(base_url=server.base_url, headers=headers) as http:
            todo = list(bodies)
            errors = 0
            start = time.perf_counter()

            async def client() -> None:
                nonlocal errors
                while todo:
                    async with http.post("/api/v1/tasks", data=todo.pop()) as answer:
                        await answer.read()
                        errors += answer.status != 201

            await asyncio.gather(*(client() for _ in range(opts.submitters)))
            seconds = time.perf_counter() - start
            server_rss = peak_rss_mb(server.pid)
    out = record("northpole", "submit_http", count * opts.batch, seconds, batch=opts.batch)
    out.update(non_201=errors, server_peak_rss_mb=server_rss)
    return out


@contextlib.contextmanager
def our_fleet(run: Run, count: int, url: str, mode: str, label: str) -> Iterator[Fleet]:
    """Our workers: talking to Redis themselves (``direct``) or to ``northpole up`` (``http``)."""
    data = run.home / f"data-{label}-{time.monotonic_ns()}"
    env = {"NORTHPOLE_TASKS__REDIS_URL": url, "NORTHPOLE_DATA_DIR": str(data)}
    env["NORTHPOLE_LOG_LEVEL"] = "WARNING"  # no line per task (the peers run quiet too)
    if mode == "direct":
        with fleet(run, "northpole", count, url, env, label) as workers:
            yield workers
        return
    with serve([venv_tool("northpole"), "up"], extra_env=env) as server:
        token = mint_token(server, "worker", "bench-worker")
        env = {**env, "NORTHPOLE_TOKEN": token}
        with fleet(run, "northpole", count, url, env, label, server.base_url) as workers:
            yield workers


async def our_presubmit(url: str, total: int, task_type: str) -> None:
    """Store ``total`` tasks before the workers start (not timed)."""
    partitions = Settings().tasks.partitions
    async with our_store(url) as store:
        for first in range(0, total, 1_000):
            batch = our_tasks(min(1_000, total - first), task_type, now_ms(), partitions)
            await store.submit(batch, now_ms=now_ms())


def our_lifecycle(run: Run, url: str, count: int, mode: str) -> dict[str, Any]:
    """``--tasks`` no-op tasks drained by ``count`` of our workers."""
    total = run.opts.tasks
    asyncio.run(our_presubmit(url, total, NOOP))
    cpu = redis_cpu(url)
    with our_fleet(run, count, url, mode, f"life{count}") as workers:
        n, seconds, timed_out = wait_done(workers, total, run.opts.timeout_s)
        used = cpu_fields(cpu, redis_cpu(url), n)
    out = record("northpole", f"lifecycle_w{count}", n, seconds, mode=mode, timed_out=timed_out)
    out.update(used)
    out["worker_peak_rss_mb"] = max(workers.peaks.values(), default=None)
    return out


async def our_paced(url: str, rate: int, seconds: float) -> int:
    """Single tasks submitted at ``rate``/s (open loop), each carrying its send time."""
    partitions = Settings().tasks.partitions
    async with our_store(url) as store:
        loop = asyncio.get_running_loop()
        total = max(1, round(rate * seconds))
        inflight: set[asyncio.Task[Any]] = set()
        start = loop.time()
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = our_tasks(1, STAMP, now_ms(), partitions, sent=str(time.time_ns()))
            job = asyncio.create_task(store.submit(task, now_ms=now_ms()))
            inflight.add(job)
            job.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)
        return total


def latency_case(
    run: Run, system: str, workers: Fleet, send: Callable[[int, float], int]
) -> dict[str, Any]:
    """Paced sends with ``workers`` running; the probes' latencies.

    First a warm-up: 20 tasks every 0.1 s until every worker process has run one
    (workers take from under a second to a few seconds to start), then until all
    warm-up tasks ran; their latencies are dropped. Then the timed sends.
    """
    warm = 0
    deadline = time.monotonic() + run.opts.timeout_s
    while len(list(workers.probe_dir.glob("*.cnt"))) < len(workers.procs):
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not all start running tasks")
        workers.check_alive()
        warm += send(200, 0.1)
        time.sleep(0.1)
    wait_done(workers, warm, run.opts.timeout_s)
    time.sleep(0.2)  # the probes flush every 50 ms
    for path in workers.probe_dir.glob("*.lat"):
        path.unlink()
    sent = send(run.opts.rate, run.opts.seconds)
    n, _, timed_out = wait_done(workers, warm + sent, run.opts.timeout_s)
    n -= warm
    lat = percentiles(workers.latencies())
    out = record(system, "latency", n, run.opts.seconds, offered_rate=run.opts.rate)
    out.update(latency_ms=lat, p99_ms=lat["p99"], timed_out=timed_out)
    out["worker_peak_rss_mb"] = max(workers.peaks.values(), default=None)
    return out


def our_latency(run: Run, url: str, mode: str) -> dict[str, Any]:
    """Submit-to-start latency with 2 of our workers."""
    with our_fleet(run, 2, url, mode, "lat") as workers:
        out = latency_case(
            run, "northpole", workers, lambda r, s: asyncio.run(our_paced(url, r, s))
        )
    out["mode"] = mode
    return out


# -- peers ------------------------------------------------------------------------------------


def peer_module(system: str) -> Any:
    """Import the peer's handler module (written into the workspace)."""
    name = f"bench_{system}"
    if name in sys.modules:
        return sys.modules[name]
    return __import__(name)


def peer_enqueue(system: str, url: str, count: int, batch: int, sent: bool = False) -> None:
    """Enqueue ``count`` no-op tasks the peer's fastest documented way."""
    mod = peer_module(system)
    stamp = (lambda: str(time.time_ns())) if sent else (lambda: None)
    if system == "dramatiq":
        for _ in range(count):
            mod.noop.send(stamp())
    elif system == "celery":
        with mod.app.producer_or_acquire() as producer:
            for _ in range(count):
                mod.noop.apply_async((stamp(),), producer=producer)
    elif system == "rq":
        from rq import Queue

        queue = Queue("bench", connection=redis.Redis.from_url(url))
        for first in range(0, count, batch):
            items = [
                Queue.prepare_data(mod.noop, args=(stamp(),), result_ttl=0)
                for _ in range(min(batch, count - first))
            ]
            queue.enqueue_many(items)
    elif system == "arq":
        peer_loop().run_until_complete(_arq_enqueue(url, count, stamp))
    elif system == "taskiq":
        peer_loop().run_until_complete(_taskiq_enqueue(mod, count, stamp))
    else:
        raise ValueError(system)


_loops: list[asyncio.AbstractEventLoop] = []


def peer_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every async peer call (their module-level clients bind to one)."""
    if not _loops:
        _loops.append(asyncio.new_event_loop())
    return _loops[0]


async def _arq_enqueue(url: str, count: int, stamp: Callable[[], str | None]) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        for first in range(0, count, 50):  # its pool holds 50 connections
            n = min(50, count - first)
            await asyncio.gather(*(pool.enqueue_job("noop", stamp()) for _ in range(n)))
    finally:
        await pool.aclose()


async def _taskiq_enqueue(mod: Any, count: int, stamp: Callable[[], str | None]) -> None:
    await mod.broker.startup()
    try:
        for first in range(0, count, 500):
            n = min(500, count - first)
            await asyncio.gather(*(mod.noop.kiq(stamp()) for _ in range(n)))
    finally:
        await mod.broker.shutdown()


def peer_paced(system: str, url: str, rate: int, seconds: float) -> int:
    """Single enqueues at ``rate``/s (open loop from one thread: each call is synchronous or
    awaited before the next, as their clients send)."""
    total = max(1, round(rate * seconds))
    if system in ("arq", "taskiq"):
        return peer_loop().run_until_complete(_peer_paced_async(system, url, rate, total))
    mod = peer_module(system)
    queue = None
    if system == "rq":
        from rq import Queue

        queue = Queue("bench", connection=redis.Redis.from_url(url))
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = str(time.time_ns())
        if system == "dramatiq":
            mod.noop.send(sent)
        elif system == "celery":
            mod.noop.apply_async((sent,))
        elif queue is not None:
            queue.enqueue(mod.noop, sent, result_ttl=0)
    return total


async def _peer_paced_async(system: str, url: str, rate: int, total: int) -> int:
    mod = peer_module(system)
    if system == "arq":
        from arq import create_pool
        from arq.connections import RedisSettings

        pool = await create_pool(RedisSettings.from_dsn(url))

        async def send(sent: str) -> Any:
            return await pool.enqueue_job("noop", sent)
    else:
        await mod.broker.startup()

        async def send(sent: str) -> Any:
            return await mod.noop.kiq(sent)

    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task[Any]] = set()
    limit = asyncio.Semaphore(40)  # within their connection pools

    async def limited(sent: str) -> Any:
        async with limit:
            return await send(sent)

    start = loop.time()
    try:
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            job = asyncio.create_task(limited(str(time.time_ns())))
            inflight.add(job)
            job.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)
    finally:
        if system == "arq":
            await pool.aclose()
        else:
            await mod.broker.shutdown()
    return total


def peer_cases(run: Run, system: str, server_url: str, db: int) -> None:
    """Every case of one peer, in a database of its own (flushed before each case)."""
    url = f"{server_url.rsplit('/', 1)[0]}/{db}"
    client = redis.Redis.from_url(url)
    opts = run.opts
    os.environ["BENCH_REDIS_URL"] = url  # the handler module reads it at import
    os.environ["BENCH_PROBE_DIR"] = str(run.home)
    client.flushdb()
    if "submit" in opts.cases:
        start = time.perf_counter()
        peer_enqueue(system, url, opts.tasks, opts.batch)
        run.report(
            {
                **record(system, "submit", opts.tasks, time.perf_counter() - start),
                "settings": PEER_SETTINGS[system],
            }
        )
    peak: list[float] = []
    for count in (1, 2) if "lifecycle" in opts.cases else ():
        client.flushdb()
        peer_enqueue(system, url, opts.tasks, opts.batch)
        with fleet(run, system, count, url, {}, f"life{count}") as workers:
            n, seconds, timed_out = wait_done(workers, opts.tasks, opts.timeout_s)
        peak += workers.peaks.values()
        out = record(system, f"lifecycle_w{count}", n, seconds, timed_out=timed_out)
        out["worker_peak_rss_mb"] = max(workers.peaks.values(), default=None)
        run.report(out)
    client.flushdb()
    if "latency" in opts.cases:
        with fleet(run, system, 2, url, {}, "lat") as workers:
            out = latency_case(run, system, workers, lambda r, s: peer_paced(system, url, r, s))
        peak += workers.peaks.values()
        run.report(out)
    run.report({**record(system, "worker_rss", 1, 0), "peak_rss_mb": max(peak, default=None)})
    client.flushdb()
    client.close()


# -- the run ----------------------------------------------------------------------------------


def flush(url: str) -> None:
    """Empty the server (every node of a cluster) between two cases."""
    if url.startswith("redis+cluster://"):
        for client in node_clients(url):
            with contextlib.closing(client):
                client.flushall()
        return
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        client.flushdb()


def our_cases(run: Run, url: str, *, where: str) -> None:
    """Every case of ours against ``url`` (``where``: single or cluster)."""
    opts = run.opts
    peak: list[float] = []
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if "submit" in opts.cases:
        steps.append(("submit_store", lambda: asyncio.run(our_submit_store(run, url))))
        if where == "single":
            steps.append(("submit_http", lambda: asyncio.run(our_submit_http(run, url))))
    for mode in opts.our_modes:
        for count in (1, 2) if "lifecycle" in opts.cases else ():
            steps.append(
                (f"lifecycle_w{count}", lambda c=count, m=mode: our_lifecycle(run, url, c, m))
            )
        if "latency" in opts.cases:
            steps.append(("latency", lambda m=mode: our_latency(run, url, m)))
    for case, step in steps:
        flush(url)
        try:
            out = step()
        except Exception as exc:
            run.fail("northpole", case, exc)
            continue
        out["redis"] = where
        if out.get("worker_peak_rss_mb"):
            peak.append(out["worker_peak_rss_mb"])
        run.report(out)
    if peak:
        rss = {**record("northpole", "worker_rss", 1, 0), "peak_rss_mb": max(peak), "redis": where}
        run.report(rss)


def installed_peers(wanted: Sequence[str]) -> list[str]:
    """The peers asked for whose packages are installed (the others are reported missing)."""
    found = []
    for peer in wanted:
        if importlib.util.find_spec(PEER_MODULES[peer]) is None:
            console.print(f"[yellow]{peer} is not installed (pip install the bench extra)[/]")
        else:
            found.append(peer)
    return found


def write_modules(home: Path) -> None:
    """The probe and every system's handler module, importable from ``home``."""
    (home / "bench_probe.py").write_text(PROBE, encoding="utf-8")
    for system, source in HANDLERS.items():
        (home / f"bench_{system}.py").write_text(source, encoding="utf-8")


def compare(
    case: str, mine: dict[str, Any], peers: dict[str, list[dict[str, Any]]]
) -> tuple[Any, dict[str, Any] | None, Any, float | None, str]:
    """Our value of ``case``, the best peer's line and value, our ratio to it (above 1:
    ours is better) and the target."""
    key = "submit" if case.startswith("submit") else case
    if case == "latency":
        best = min(peers.get(key, []), key=lambda r: r["p99_ms"] or math.inf, default=None)
        value, theirs = mine["p99_ms"], (best or {}).get("p99_ms")
        ratio = round(theirs / value, 2) if value and theirs else None
        return value, best, theirs, ratio, f"p99 < {TARGETS['latency_p99_ms']} ms"
    if case == "worker_rss":
        best = min(peers.get(key, []), key=lambda r: r["peak_rss_mb"] or math.inf, default=None)
        value, theirs = mine["peak_rss_mb"], (best or {}).get("peak_rss_mb")
        ratio = round(theirs / value, 2) if value and theirs else None
        return value, best, theirs, ratio, f"< {TARGETS['rss']} MB"
    best = max(peers.get(key, []), key=lambda r: r["rate"] or 0, default=None)
    value, theirs = mine["rate"], (best or {}).get("rate")
    ratio = round(value / theirs, 2) if value and theirs else None
    goal = TARGETS.get(key)
    return value, best, theirs, ratio, f">= {goal:,.0f}/s" if goal else ""


def summary(run: Run) -> None:
    """Ours against the best peer per case, with the targets, on stderr."""
    ours = {
        (r["case"], r.get("mode")): r
        for r in run.results
        if r["system"] == "northpole" and r.get("redis") == "single" and "error" not in r
    }
    peers: dict[str, list[dict[str, Any]]] = {}
    for r in run.results:
        if r["system"] != "northpole" and "error" not in r:
            peers.setdefault(r["case"], []).append(r)
    table = Table(title="bench/queue_redis.py" + (" (quick)" if run.opts.quick else ""))
    for column in ("case", "northpole", "best peer", "peer value", "ratio", "target"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for (case, mode), mine in ours.items():
        value, best, theirs, ratio, target = compare(case, mine, peers)
        if case != "worker_rss" and (case, mode) not in TARGET_ROWS:
            target = ""
        label = f"{case} ({mode})" if mode else case
        table.add_row(
            label,
            f"{value:,}" if value is not None else "",
            (best or {}).get("system", ""),
            f"{theirs:,}" if theirs is not None else "",
            "" if ratio is None else str(ratio),
            target,
        )
    console.print(table)
    scaled = [r for r in run.results if r.get("redis") == "cluster" and "rate" in r]
    for r in scaled:
        single = ours.get((r["case"], r.get("mode")))
        if single and r["case"] == "latency":
            console.print(
                f"cluster/single latency {r.get('mode') or ''}: p99 {r['p99_ms']} ms / "
                f"{single['p99_ms']} ms at {r['offered_rate']:,}/s"
            )
        elif single and single.get("rate") and r.get("rate"):
            console.print(
                f"cluster/single {r['case']} {r.get('mode') or ''}: "
                f"{r['rate']:,} / {single['rate']:,} = {r['rate'] / single['rate']:.2f}"
            )
            one = single.get("redis_cpu_us_per_task")
            busiest = r.get("busiest_redis_cpu_us_per_task")
            if one and busiest:
                console.print(
                    f"  Redis CPU per task: one server {one} us, busiest of the masters "
                    f"{busiest} us: a Redis-bound ceiling {one / busiest:.2f}x one server's"
                )


def parse_args(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only", action="append", default=[], help="northpole or a peer (repeatable)"
    )
    parser.add_argument("--tasks", type=int, help="tasks per case (default 50000, quick 5000)")
    parser.add_argument("--batch", type=int, default=1_000, help="tasks per batch submit")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent batch submits")
    parser.add_argument("--rate", type=int, default=5_000, help="latency case: tasks/s")
    parser.add_argument("--seconds", type=float, help="latency case: seconds (5, quick 1)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the 3-master cluster")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        choices=("submit", "lifecycle", "latency"),
        help="run only these cases (repeatable; worker_rss comes with the others)",
    )
    parser.add_argument(
        "--our-workers",
        choices=("direct", "http", "both"),
        default="both",
        help="our workers talk to Redis (direct), to northpole up (http), or both",
    )
    args = parser.parse_args(argv)
    systems = ("northpole", *PEERS)
    unknown = [s for s in args.only if s not in systems]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {systems}")
    modes = ("direct", "http") if args.our_workers == "both" else (args.our_workers,)
    return Options(
        quick=args.quick,
        only=tuple(args.only),
        tasks=args.tasks or (5_000 if args.quick else 50_000),
        batch=args.batch,
        submitters=args.submitters,
        rate=args.rate,
        seconds=args.seconds or (1.0 if args.quick else 5.0),
        cluster=not args.no_cluster,
        cases=tuple(args.case) or ("submit", "lifecycle", "latency"),
        our_modes=modes,
        timeout_s=60.0 if args.quick else 180.0,
    )


def main(argv: list[str] | None = None) -> int:
    """Run every selected system's cases; return 1 if any could not run."""
    opts = parse_args(argv)
    wanted = opts.only or ("northpole", *PEERS)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # as in our servers
    with tempfile.TemporaryDirectory(prefix="northpole-bench-redis-") as tmp:
        home = Path(tmp)
        write_modules(home)
        sys.path.insert(0, str(home))
        run = Run(opts, home)
        server = start_redis(home / "redis", "--save", "", "--appendonly", "no")
        try:
            console.print(f"redis-server pid {server.popen.pid} at {server.url}")
            if "northpole" in wanted:
                our_cases(run, server.url, where="single")
            for db, peer in enumerate(installed_peers([p for p in PEERS if p in wanted]), 1):
                console.print(f"[bold]{peer}[/]: {PEER_SETTINGS[peer]}")
                try:
                    peer_cases(run, peer, server.url, db)
                except Exception as exc:
                    run.fail(peer, "all", exc)
        finally:
            server.stop()
        if opts.cluster and "northpole" in wanted:
            cluster = start_cluster(home / "cluster")
            try:
                console.print(f"3-master cluster at {cluster.url}")
                our_cases(run, cluster.url, where="cluster")
            finally:
                cluster.stop()
        summary(run)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
