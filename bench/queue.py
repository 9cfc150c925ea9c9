"""Benchmark of the task queue: submits, worker throughput, start latency and memory.

Run from the repository root::

    .venv/bin/python bench/queue.py                    # the full run, about 2 minutes
    .venv/bin/python bench/queue.py --quick            # a short smoke run
    .venv/bin/python bench/queue.py --only queue.lifecycle
    .venv/bin/python bench/queue.py --profile /tmp/qp  # also py-spy the server per case

Every case starts its own ``northpole up`` (embedded edition: SQLite in a
temporary data dir) on a free 127.0.0.1 port, so the tasks one case leaves
behind cannot slow the next one down; it is stopped with SIGTERM when the case
ends, whatever happened. The bench talks HTTP with aiohttp and an operator
token; workers are ``northpole worker`` processes (``--url``, a worker token)
serving a handler module written to a temporary directory. Cases
(``--only`` takes a name or a prefix, and may be repeated):

``queue.submit_single``
    ``POST /api/v1/tasks`` with one task per request, from ``--clients``
    concurrent clients in closed loops, for ``--seconds``; rate is tasks/s.
``queue.submit_batch``
    The same with ``{"tasks": [...1,000 tasks]}`` per request; target
    20,000 tasks/s.
``queue.lifecycle_1w``, ``queue.lifecycle_2w``
    ``--tasks`` no-op tasks are submitted first (batches of 1,000, not
    timed), then 1 (2) workers start with ``--concurrency`` (each claim asks
    for that many tasks). ``GET /api/v1/queues`` is polled every 50-100 ms
    until every task is COMPLETED. ``rate`` is tasks over ``seconds``, from
    the first poll that sees a task claimed to the first that sees all
    completed (so worker start-up is not in it; ``seconds_incl_startup``
    counts from the spawn). Target 5,000 tasks/s. If a worker exits, the
    wait ends there: ``n`` counts what was completed, ``worker_died`` says
    why (the end of its log), the target is not met and the exit status is 1.
``queue.lifecycle_2w_live``
    2 workers already running and registered, then the tasks are submitted
    (2 clients, batches of 1,000) while they drain; ``seconds`` runs from the
    first submit to all completed. Same target.
``queue.start_latency``
    ``--latency-workers`` workers run a handler returning ``time.time_ns()``
    when it starts; single-task submits are paced at ``--latency-rate``/s
    (open loop: a slow answer does not delay the next send) for
    ``--seconds``. Then every task is read back with ``GET /api/v1/tasks/{id}``
    and the latency from the client's send time to the handler's start is
    computed (``latency_ms``), as well as from the task's ``created_at``
    (millisecond resolution: ``latency_from_created_ms``). Target p99 under
    20 ms (on ``latency_ms``, the one a submitter sees).
``queue.server_peak_rss``, ``queue.worker_peak_rss``
    The largest peak RSS (VmHWM) of the servers, resp. worker processes, of
    the cases that ran before, with the value of each case. A server's peak
    is reset (``clear_refs``) when its case's timed part starts, so it
    leaves out the pre-submit. No target.

Output: stdout carries one JSON line per case and nothing else; progress, a
summary table (and with ``--profile`` the top frames) go to stderr. Lines have
``case``, ``n``, ``seconds``, ``rate`` and ``peak_rss_mb`` (of the case's
server); lines with a target add ``target``, ``target_on`` and
``meets_target``. ``server_cpu_s`` and ``client_cpu_s`` are the CPU seconds
the server and this process used in the timed part (``server_cpu_util``: 1.0
is one core busy the whole time); ``loadavg_1m`` is the machine's load when
the case ended (above the core count, processes waited for a CPU: the case's
own server and workers count, and so does anything else running). A
case that could not run prints ``{"case": ..., "error": ...}`` and the script
exits with status 1. The machine is small (2 cores): the bench, the server
and the workers share them, so compare runs, not single numbers.

With ``--profile DIR``, py-spy samples the server (and the first worker of
the lifecycle cases) during each timed part and writes ``DIR/<case>.<who>.txt``
(raw format: ``thread;frame;...;frame count``); the top functions by self and
total time are printed at the end. ``--profile-pause`` makes py-spy pause the
process for each sample (more exact stacks, slower process).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file has the name of the standard library's ``queue`` module, and the
# script's directory comes first on sys.path, so anything importing ``queue``
# (asyncio's thread pool, logging.handlers, ...) would get this file. Moving
# bench/ to the end lets the standard library win; ``_common`` is still found.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.append(str(_BENCH_DIR))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from rich.table import Table  # noqa: E402

from _common import (  # noqa: E402
    Server,
    case_record,
    console,
    cpu_seconds,
    emit,
    mint_token,
    peak_rss_mb,
    py_spy,
    reset_peak_rss,
    rss_mb,
    serve,
    summarize_profile,
    venv_tool,
    with_target,
)

TASKS_PATH = "/api/v1/tasks"
QUEUES_PATH = "/api/v1/queues"
BATCH = 1_000  # tasks per batch submit (the API allows up to MAX_BATCH)
GROUP = "bench"

#: Task types: submitted only (no worker), no-op, and start-time stamp.
SUBMIT_TYPE = "bench_submit"
NOOP_TYPE = "bench_noop"
STAMP_TYPE = "bench_stamp"

SUBMIT_BATCH_TARGET = 20_000
LIFECYCLE_TARGET = 5_000
START_P99_TARGET_MS = 20.0

HANDLERS_MODULE = "bench_queue_handlers"
HANDLERS_SOURCE = f'''"""Handlers of bench/queue.py (written to a temporary directory)."""

import time

from northpole.tasks.handlers import TaskContext, TaskRegistry

registry = TaskRegistry()


@registry.handler("{NOOP_TYPE}")
async def noop(ctx: TaskContext) -> None:
    return None


@registry.handler("{STAMP_TYPE}")
async def stamp(ctx: TaskContext) -> str:
    return str(time.time_ns())
'''

CASES = (
    "queue.submit_single",
    "queue.submit_batch",
    "queue.lifecycle_1w",
    "queue.lifecycle_2w",
    "queue.lifecycle_2w_live",
    "queue.start_latency",
    "queue.server_peak_rss",
    "queue.worker_peak_rss",
)


@dataclass(frozen=True)
class Options:
    """What to run and how hard."""

    quick: bool
    only: tuple[str, ...]
    seconds: float
    clients: int
    tasks: int
    concurrency: int
    latency_rate: int
    latency_workers: int
    drain_timeout_s: float
    profile: Path | None
    profile_pause: bool

    def wants(self, case: str) -> bool:
        """Whether ``case`` was selected (all are when ``--only`` is not given)."""
        return not self.only or any(case.startswith(prefix) for prefix in self.only)


@dataclass
class Run:
    """The options and what the cases reported so far."""

    opts: Options
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failed: bool = False
    #: Peak RSS in MiB of each case's server, and of its worker processes.
    server_rss: dict[str, float] = field(default_factory=dict)
    worker_rss: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report(self, record: dict[str, Any]) -> None:
        """Print a case's result (with the 1-minute load average: others' work skews it)."""
        record["loadavg_1m"] = round(os.getloadavg()[0], 2)
        if record["loadavg_1m"] > (os.cpu_count() or 1):
            console.print(
                f"[yellow]load average {record['loadavg_1m']} is above the {os.cpu_count()} "
                "cores: processes queued for CPU (this case's own server and workers count)[/]"
            )
        emit(record)
        self.results[record["case"]] = record

    def fail(self, case: str, exc: BaseException) -> None:
        """Report a case that could not run because of ``exc``."""
        console.print(f"[red]{case} failed:[/]")
        console.print("".join(traceback.format_exception(exc)), markup=False)
        self.errors[case] = f"{type(exc).__name__}: {exc}"
        emit({"case": case, "error": self.errors[case]})
        self.failed = True


# -- small helpers ------------------------------------------------------------------


def percentiles(values: Sequence[float], digits: int = 2) -> dict[str, float | None]:
    """Nearest-rank p50, p90, p99 and the max of ``values`` (``None`` when empty)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], digits)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": rank(1.0)}


def gift_id() -> str:
    """A random gift id (a positive signed 64-bit integer, as a decimal string)."""
    return str(random.randrange(1, 2**63))


def task_body(task_type: str) -> dict[str, Any]:
    """One task as submitted: a gift and a type, everything else left to the defaults."""
    return {"gift_id": gift_id(), "task_type": task_type}


def batch_bytes(task_type: str, size: int = BATCH) -> bytes:
    """The body of one batch submit of ``size`` tasks."""
    return orjson.dumps({"tasks": [task_body(task_type) for _ in range(size)]})


def parse_ms(text: str) -> int:
    """RFC 3339 (as the API writes it) to Unix milliseconds."""
    return round(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass
class CpuMeter:
    """CPU seconds of the server and of this process between start and stop."""

    server_pid: int
    start_server: float = 0.0
    start_client: float = 0.0
    start_wall: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        """Take the starting readings."""
        self.start_server = cpu_seconds(self.server_pid) or 0.0
        self.start_client = cpu_seconds() or 0.0
        self.start_wall = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """Return ``server_cpu_s``, ``server_cpu_util`` and ``client_cpu_s`` since start."""
        wall = time.perf_counter() - self.start_wall
        server = (cpu_seconds(self.server_pid) or 0.0) - self.start_server
        client = (cpu_seconds() or 0.0) - self.start_client
        return {
            "server_cpu_s": round(server, 2),
            "server_cpu_util": round(server / wall, 2) if wall > 0 else None,
            "client_cpu_s": round(client, 2),
        }


# -- the server and its clients -------------------------------------------------------


@dataclass
class Queue:
    """A running server, its tokens and an HTTP session with the operator token."""

    server: Server
    operator_token: str
    worker_token: str
    http: aiohttp.ClientSession

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.server.pid

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST JSON ``body``; return the status and the answer's bytes."""
        async with self.http.post(path, data=body) as response:
            return response.status, await response.read()

    async def get_json(self, path: str) -> Any:
        """GET ``path`` and return its JSON (raise on a non-200 answer)."""
        async with self.http.get(path) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path} answered {response.status}: {data[:300]!r}")
            return orjson.loads(data)

    async def submit_batch(self, body: bytes) -> list[dict[str, Any]]:
        """Submit one batch; return the stored tasks (raise unless 201)."""
        status, data = await self.post(TASKS_PATH, body)
        if status != 201:
            raise RuntimeError(f"batch submit answered {status}: {data[:300]!r}")
        tasks: list[dict[str, Any]] = orjson.loads(data)["tasks"]
        return tasks

    async def states(self, task_type: str) -> dict[str, int]:
        """Tasks of ``task_type`` per state, from ``GET /api/v1/queues``."""
        report = await self.get_json(QUEUES_PATH)
        counts: dict[str, int] = {}
        for row in report["depths"]:
            if row["task_type"] == task_type:
                counts[row["state"]] = counts.get(row["state"], 0) + row["count"]
        return counts

    async def group_workers(self, group: str) -> int:
        """How many workers the queue knows in ``group``."""
        report = await self.get_json(QUEUES_PATH)
        return sum(g["workers"] for g in report["groups"] if g["group"] == group)


@contextlib.asynccontextmanager
async def running_queue(run: Run, case: str, connections: int = 32) -> AsyncIterator[Queue]:
    """Start ``northpole up`` with a fresh data dir; stop it (SIGTERM) at the end."""
    with serve([venv_tool("northpole"), "up"], ready_path="/readyz") as server:
        console.print(f"[bold]{case}[/]: server pid {server.pid} ready at {server.base_url}")
        operator = mint_token(server, "operator", "bench")
        worker = mint_token(server, "worker", "bench-worker")
        headers = {"Authorization": f"Bearer {operator}", "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(
            base_url=server.base_url,
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as session:
            queue = Queue(server, operator, worker, session)
            try:
                yield queue
            finally:
                run.server_rss[case] = peak_rss_mb(server.pid) or 0.0
    if not server.stopped_on_sigterm:
        raise RuntimeError(f"the server of {case} did not stop on SIGTERM")


@contextlib.contextmanager
def profiled(run: Run, case: str, pid: int, role: str = "server") -> Iterator[None]:
    """With ``--profile DIR``, sample ``pid`` with py-spy while the block runs."""
    if run.opts.profile is None:
        yield
        return
    output = run.opts.profile / f"{case}.{role}.txt"
    with py_spy(pid, output, pause=run.opts.profile_pause):
        yield
    if output.exists():
        run.profiles[f"{case} ({role})"] = summarize_profile(output)


# -- workers ------------------------------------------------------------------------------


class WorkerDied(RuntimeError):
    """A worker process exited while a case needed it."""


@dataclass
class Fleet:
    """Worker processes serving the bench's handler module."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    #: Last readings per worker (kept when a worker has died since).
    peaks: dict[int, float] = field(default_factory=dict)
    cpus: dict[int, float] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        """Raise :class:`WorkerDied` if a worker has exited, with the end of its log."""
        self.sample()
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                print_tail = "\n".join(lines[-25:])
                console.print(f"[red]worker pid {proc.pid} exited with {proc.returncode}:[/]")
                console.print(print_tail, markup=False)
                last = " ".join(ln.strip(" │") for ln in lines[-2:]) if lines else "(no output)"
                raise WorkerDied(f"worker pid {proc.pid} exited with {proc.returncode}: {last}")

    def sample(self) -> None:
        """Read each live worker's peak RSS and CPU time."""
        for pid in self.pids:
            if (peak := peak_rss_mb(pid)) is not None:
                self.peaks[pid] = peak
            if (cpu := cpu_seconds(pid)) is not None:
                self.cpus[pid] = cpu

    def peak_rss_mb(self) -> float | None:
        """The largest peak RSS of the workers, in MiB (as last read)."""
        self.sample()
        return max(self.peaks.values(), default=None)

    def cpu_s(self) -> list[float | None]:
        """Each worker's CPU seconds (as last read)."""
        self.sample()
        return [None if pid not in self.cpus else round(self.cpus[pid], 2) for pid in self.pids]


@contextlib.contextmanager
def workers(
    run: Run, queue: Queue, count: int, *, task_type: str, concurrency: int
) -> Iterator[Fleet]:
    """Start ``count`` workers for ``task_type``; SIGTERM (drain) them at the end."""
    base = [venv_tool("northpole"), "worker"]
    with tempfile.TemporaryDirectory(prefix="northpole-bench-worker-") as tmp:
        home = Path(tmp)
        (home / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE, encoding="utf-8")
        path = os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "NORTHPOLE_TOKEN": queue.worker_token,
            "NORTHPOLE_DATA_DIR": str(home / "data"),
        }
        argv = [*base, "--group", GROUP, "--concurrency", str(concurrency)]
        argv += ["--types", task_type, "--url", queue.server.base_url]
        argv += ["--drain-timeout-s", "5", f"{HANDLERS_MODULE}:registry"]
        fleet = Fleet([], [])
        try:
            for k in range(count):
                log = home / f"worker-{k}.log"
                with log.open("wb") as out:
                    fleet.procs.append(
                        subprocess.Popen(
                            argv,
                            env=env,
                            cwd=tmp,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
                fleet.logs.append(log)
            console.print(f"  {count} worker(s) started: pids {fleet.pids}")
            yield fleet
        finally:
            stop_all(fleet.procs, 15.0)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every process at once (one signal: a second one aborts a worker), then wait;
    SIGKILL what is still running after ``timeout_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(f"[red]worker pid {proc.pid} ignored SIGTERM; killing it[/]")
            proc.kill()
            proc.wait(timeout=10)


async def wait_for_workers(queue: Queue, fleet: Fleet, count: int, timeout_s: float) -> float:
    """Wait until the queue knows ``count`` workers of the group; return how long it took."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        fleet.check_alive()
        if await queue.group_workers(GROUP) >= count:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} worker(s) not registered after {timeout_s} s")


@dataclass
class Drained:
    """How a wait for completion ended."""

    completed: int
    counts: dict[str, int]
    first_claim: float | None  # perf_counter of the first poll that saw a task claimed
    done: float | None  # perf_counter of the first poll that saw all completed
    timed_out: bool
    worker_died: str | None = None  # why the wait ended early


async def wait_completed(
    queue: Queue, fleet: Fleet, task_type: str, total: int, timeout_s: float
) -> Drained:
    """Poll the queues report until ``total`` tasks of ``task_type`` are COMPLETED."""
    start = time.perf_counter()
    first_claim = None
    counts: dict[str, int] = {}
    while time.perf_counter() - start < timeout_s:
        counts = await queue.states(task_type)
        now = time.perf_counter()
        done = counts.get("COMPLETED", 0)
        if first_claim is None and sum(v for k, v in counts.items() if k != "PENDING"):
            first_claim = now
        if done >= total:
            return Drained(done, counts, first_claim, now, timed_out=False)
        if sum(counts.get(s, 0) for s in ("FAILED", "EXPIRED")):
            raise RuntimeError(f"tasks failed: {counts}")
        try:
            fleet.check_alive()
        except WorkerDied as exc:  # what it finished still counts; the rest would wait for leases
            return Drained(done, counts, first_claim, None, timed_out=False, worker_died=str(exc))
        await asyncio.sleep(0.05 if first_claim is None else 0.1)
    return Drained(counts.get("COMPLETED", 0), counts, first_claim, None, timed_out=True)


async def submit_all(queue: Queue, bodies: Sequence[bytes], clients: int) -> list[int]:
    """Submit the batches ``bodies`` from ``clients`` concurrent clients; return the ids."""
    ids: list[int] = []
    pending = list(reversed(bodies))

    async def client() -> None:
        while pending:
            ids.extend(int(t["id"]) for t in await queue.submit_batch(pending.pop()))

    await asyncio.gather(*(client() for _ in range(clients)))
    return ids


# -- cases --------------------------------------------------------------------------------


@dataclass
class Load:
    """What a closed-loop load saw."""

    seconds: float
    requests: int
    ok: int
    statuses: dict[int, int]
    errors: dict[str, int]
    latency_ms: list[float]
    bytes_in: int


async def closed_loop(queue: Queue, bodies: Sequence[bytes], clients: int, seconds: float) -> Load:
    """``clients`` concurrent clients POST bodies (round robin) for ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    counted = [0, 0]  # requests, bytes in

    async def client(k: int) -> None:
        i = k
        while loop.time() < deadline:
            body = bodies[i % len(bodies)]
            i += clients
            sent = time.perf_counter()
            try:
                status, data = await queue.post(TASKS_PATH, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - sent) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            counted[0] += 1
            counted[1] += len(data)

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - start
    return Load(elapsed, counted[0], statuses.get(201, 0), statuses, errors, latencies, counted[1])


def load_record(case: str, load: Load, per_request: int, queue: Queue) -> dict[str, Any]:
    """The common record of a submit load: n counts tasks of 201 answers only."""
    record = case_record(
        case,
        load.ok * per_request,
        load.seconds,
        peak_rss_mb=peak_rss_mb(queue.pid),
        unit="tasks/s",
        tasks_per_request=per_request,
        requests=load.requests,
        requests_per_s=round(load.requests / load.seconds, 1),
        non_201=load.requests - load.ok,
        statuses={str(k): v for k, v in sorted(load.statuses.items())},
        client_errors=load.errors,
        latency_ms=percentiles(load.latency_ms),
        response_kib_per_request=round(load.bytes_in / max(load.requests, 1) / 1024, 1),
    )
    record["clean"] = record["non_201"] == 0 and not load.errors
    return record


async def case_submit(run: Run, case: str, per_request: int) -> dict[str, Any]:
    """Closed-loop submits of ``per_request`` tasks per request (1: single-task bodies)."""
    clients = run.opts.clients
    async with running_queue(run, case, connections=clients) as queue:
        if per_request == 1:
            bodies = [orjson.dumps(task_body(SUBMIT_TYPE)) for _ in range(4096)]
        else:
            bodies = [batch_bytes(SUBMIT_TYPE, per_request) for _ in range(8)]
        await closed_loop(queue, bodies[:clients], clients, 0.3)  # warm-up, not counted
        reset_peak_rss(queue.pid)
        console.print(
            f"  {clients} clients, {per_request} task(s) per request, {run.opts.seconds:g} s"
        )
        meter = CpuMeter(queue.pid)
        meter.start()
        with profiled(run, case, queue.pid):
            load = await closed_loop(queue, bodies, clients, run.opts.seconds)
        record = load_record(case, load, per_request, queue)
        record.update(meter.stop())
        record["clients"] = clients
    if per_request == BATCH:
        with_target(record, SUBMIT_BATCH_TARGET)
        record["meets_target"] = record["meets_target"] and record["clean"]
    console.print(
        f"  {record['n']:,} tasks in {record['seconds']} s: {record['rate']:,.0f} tasks/s, "
        f"{record['requests_per_s']:,.0f} requests/s, p99 {record['latency_ms']['p99']} ms"
    )
    return record


async def case_lifecycle(run: Run, case: str, count: int, *, live: bool) -> dict[str, Any]:
    """N no-op tasks drained by ``count`` workers: submitted before (or while) they run."""
    opts = run.opts
    total = opts.tasks
    bodies = [batch_bytes(NOOP_TYPE, min(BATCH, total - i)) for i in range(0, total, BATCH)]
    async with running_queue(run, case) as queue:
        if not live:
            await submit_all(queue, bodies, 2)
            console.print(f"  {total:,} tasks submitted; starting {count} worker(s)")
        reset_peak_rss(queue.pid)
        spawned = time.perf_counter()
        with workers(run, queue, count, task_type=NOOP_TYPE, concurrency=opts.concurrency) as fleet:
            meter = CpuMeter(queue.pid)
            submit_s = None
            with profiled(run, case, queue.pid), profiled(run, case, fleet.pids[0], "worker0"):
                if live:
                    await wait_for_workers(queue, fleet, count, 60)
                    meter.start()
                    start = time.perf_counter()
                    waiter = asyncio.create_task(
                        wait_completed(queue, fleet, NOOP_TYPE, total, opts.drain_timeout_s)
                    )
                    await submit_all(queue, bodies, 2)
                    submit_s = time.perf_counter() - start
                    drained = await waiter
                else:
                    meter.start()
                    drained = await wait_completed(
                        queue, fleet, NOOP_TYPE, total, opts.drain_timeout_s
                    )
                    start = drained.first_claim or spawned
            cpu = meter.stop()
            worker_cpu = fleet.cpu_s()
            worker_peak = fleet.peak_rss_mb()
            if worker_peak is not None:
                run.worker_rss[case] = worker_peak
        end = drained.done if drained.done is not None else time.perf_counter()
        record = case_record(
            case,
            drained.completed,
            end - start,
            peak_rss_mb=peak_rss_mb(queue.pid),
            unit="tasks/s",
            tasks=total,
            workers=count,
            concurrency=opts.concurrency,
            submitted_while_draining=live,
            seconds_incl_startup=None if live else round(end - spawned, 3),
            submit_seconds=None if submit_s is None else round(submit_s, 3),
            timed_out=drained.timed_out,
            worker_died=drained.worker_died,
            final_states=drained.counts,
            worker_peak_rss_mb=worker_peak,
            worker_cpu_s=worker_cpu,
            **cpu,
        )
        if not live:
            record["rate_incl_startup"] = round(drained.completed / (end - spawned), 1)
    with_target(record, LIFECYCLE_TARGET)
    if drained.timed_out or drained.worker_died:
        record["meets_target"] = False
    if drained.worker_died:
        run.failed = True
    ended = " [red](timed out)[/]" if drained.timed_out else ""
    ended += " [red](a worker died)[/]" if drained.worker_died else ""
    console.print(
        f"  {record['n']:,}/{total:,} completed in {record['seconds']} s: "
        f"{record['rate']:,.0f} tasks/s{ended}"
    )
    return record


@dataclass
class Sent:
    """One paced submit: when it was sent (ns, wall clock), how long its answer took."""

    send_ns: int
    answer_ms: float | None = None
    task_id: int | None = None
    created_ms: int | None = None
    error: str | None = None


async def paced_submits(queue: Queue, rate: int, seconds: float) -> tuple[list[Sent], float]:
    """Send single-task submits at ``rate``/s for ``seconds`` (open loop); return them."""
    loop = asyncio.get_running_loop()
    total = max(1, round(rate * seconds))
    sent: list[Sent] = []
    inflight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(256)

    async def one(item: Sent, body: bytes) -> None:
        async with limit:
            try:
                status, data = await queue.post(TASKS_PATH, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                item.error = type(exc).__name__
                return
            item.answer_ms = (time.time_ns() - item.send_ns) / 1e6
            if status != 201:
                item.error = f"HTTP {status}"
                return
            task = orjson.loads(data)
            item.task_id = int(task["id"])
            item.created_ms = parse_ms(task["created_at"])

    bodies = [orjson.dumps(task_body(STAMP_TYPE)) for _ in range(total)]
    start = loop.time()
    for i, body in enumerate(bodies):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        item = Sent(time.time_ns())
        sent.append(item)
        task = asyncio.create_task(one(item, body))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    pacing_s = loop.time() - start
    await asyncio.gather(*inflight)
    return sent, pacing_s


async def read_tasks(queue: Queue, ids: Sequence[int], clients: int = 16) -> list[dict[str, Any]]:
    """``GET /api/v1/tasks/{id}`` for every id, ``clients`` at a time."""
    out: list[dict[str, Any]] = []
    todo = list(ids)

    async def client() -> None:
        while todo:
            out.append(await queue.get_json(f"{TASKS_PATH}/{todo.pop()}"))

    await asyncio.gather(*(client() for _ in range(clients)))
    return out


async def case_start_latency(run: Run, case: str) -> dict[str, Any]:
    """Submit->start latency at a steady single-task submit rate."""
    opts = run.opts
    count = opts.latency_workers
    async with running_queue(run, case, connections=64) as queue:
        with workers(run, queue, count, task_type=STAMP_TYPE, concurrency=100) as fleet:
            await wait_for_workers(queue, fleet, count, 60)
            # Warm up connections on both sides; these tasks are not counted.
            warm, _ = await paced_submits(queue, 100, 0.5)
            await wait_completed(queue, fleet, STAMP_TYPE, len(warm), 30)
            reset_peak_rss(queue.pid)
            console.print(f"  {count} worker(s); {opts.latency_rate}/s for {opts.seconds:g} s")
            meter = CpuMeter(queue.pid)
            meter.start()
            with profiled(run, case, queue.pid):
                sent, pacing_s = await paced_submits(queue, opts.latency_rate, opts.seconds)
            cpu = meter.stop()
            ok = [s for s in sent if s.task_id is not None]
            drained = await wait_completed(
                queue, fleet, STAMP_TYPE, len(warm) + len(ok), opts.drain_timeout_s
            )
            worker_peak = fleet.peak_rss_mb()
            if worker_peak is not None:
                run.worker_rss[case] = worker_peak
            tasks = {int(t["id"]): t for t in await read_tasks(queue, [s.task_id for s in ok])}
        from_send: list[float] = []
        from_created: list[float] = []
        for item in ok:
            task = tasks.get(item.task_id or 0)
            if task is None or task["state"] != "COMPLETED" or not task["result"]:
                continue
            started_ns = int(task["result"])
            from_send.append((started_ns - item.send_ns) / 1e6)
            from_created.append(started_ns / 1e6 - (item.created_ms or 0))
        answers = [s.answer_ms for s in sent if s.answer_ms is not None]
        record = case_record(
            case,
            len(sent),
            pacing_s,
            peak_rss_mb=peak_rss_mb(queue.pid),
            unit="submits/s",
            offered_rate=opts.latency_rate,
            submit_errors=len(sent) - len(ok),
            measured=len(from_send),
            workers=count,
            concurrency=100,
            latency_ms=percentiles(from_send),
            latency_from_created_ms=percentiles(from_created),
            submit_answer_ms=percentiles(answers),
            start_latency_p99_ms=percentiles(from_send)["p99"],
            timed_out=drained.timed_out,
            worker_died=drained.worker_died,
            worker_peak_rss_mb=worker_peak,
            **cpu,
        )
    with_target(record, START_P99_TARGET_MS, key="start_latency_p99_ms", higher_is_better=False)
    if record["measured"] < len(sent):
        record["meets_target"] = False
    if drained.worker_died:
        run.failed = True
    lat = record["latency_ms"]
    console.print(
        f"  {record['measured']:,}/{len(sent):,} measured: send->start p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms"
    )
    return record


def rss_record(case: str, by_case: dict[str, float], what: str) -> dict[str, Any]:
    """The largest of the peak RSS values of ``by_case``."""
    worst = max(by_case, key=lambda c: by_case[c]) if by_case else None
    return {
        "case": case,
        "n": len(by_case),
        "seconds": 0,
        "rate": None,
        "unit": f"MiB ({what})",
        "peak_rss_mb": by_case[worst] if worst else None,
        "peak_in_case": worst,
        "by_case": by_case,
        "rss_mb_now": rss_mb(),
    }


# -- driver -------------------------------------------------------------------------------


def case_functions(run: Run) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    """Every case, in the order they run, as a coroutine maker."""
    return {
        "queue.submit_single": lambda: case_submit(run, "queue.submit_single", 1),
        "queue.submit_batch": lambda: case_submit(run, "queue.submit_batch", BATCH),
        "queue.lifecycle_1w": lambda: case_lifecycle(run, "queue.lifecycle_1w", 1, live=False),
        "queue.lifecycle_2w": lambda: case_lifecycle(run, "queue.lifecycle_2w", 2, live=False),
        "queue.lifecycle_2w_live": lambda: case_lifecycle(
            run, "queue.lifecycle_2w_live", 2, live=True
        ),
        "queue.start_latency": lambda: case_start_latency(run, "queue.start_latency"),
    }


async def run_cases(run: Run) -> None:
    """Run the selected cases one after the other; then the RSS summaries."""
    for case, make in case_functions(run).items():
        if not run.opts.wants(case):
            continue
        try:
            run.report(await make())
        except Exception as exc:
            run.fail(case, exc)
    if run.opts.wants("queue.server_peak_rss") and run.server_rss:
        run.report(rss_record("queue.server_peak_rss", run.server_rss, "northpole up"))
    if run.opts.wants("queue.worker_peak_rss") and run.worker_rss:
        run.report(rss_record("queue.worker_peak_rss", run.worker_rss, "northpole worker"))


def print_summary(run: Run) -> None:
    """A table of rates and targets, then the profiles' top frames, on stderr."""
    table = Table(title="bench/queue.py" + (" (quick)" if run.opts.quick else ""))
    table.add_column("case", no_wrap=True)
    for column in ("rate /s", "p99 ms", "peak RSS MiB", "target", "met"):
        table.add_column(column, justify="right")
    for case, r in run.results.items():
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.get("meets_target")]
        target = f"{r['target_on']} {r['target']:,}" if "target" in r else ""
        rate = "" if r["rate"] is None else f"{r['rate']:,.0f}"
        p99 = (r.get("latency_ms") or {}).get("p99")
        table.add_row(
            case, rate, "" if p99 is None else str(p99), str(r["peak_rss_mb"]), target, met
        )
    for case in run.errors:
        table.add_row(case, "[red]error[/]", "", "", "", "")
    console.print(table)
    for label, summary in run.profiles.items():
        console.print(f"[bold]profile {label}[/]: {summary['samples']} samples")
        console.print(f"  threads: {summary['threads_pct']}")
        for title, key in (("self", "self_pct"), ("total", "total_pct")):
            console.print(f"  top by {title} %:")
            for name, pct in summary[key]:
                console.print(f"    {pct:5.1f}  {name}", markup=False)


def parse_args(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CASE",
        help="run cases whose name starts with CASE (repeatable)",
    )
    parser.add_argument("--seconds", type=float, help="per load (default 5, quick 1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitters (8)")
    parser.add_argument("--tasks", type=int, help="lifecycle tasks (default 20000, quick 2000)")
    parser.add_argument(
        "--concurrency", type=int, default=500, help="worker --concurrency (500; max 1000)"
    )
    parser.add_argument("--latency-rate", type=int, default=1000, help="submits/s (1000)")
    parser.add_argument("--latency-workers", type=int, default=1, help="workers (1)")
    parser.add_argument("--drain-timeout", type=float, help="s to wait for completion (120)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the server per case")
    parser.add_argument(
        "--profile-pause", action="store_true", help="py-spy pauses the process per sample"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if not any(c.startswith(n) for c in CASES)]
    if unknown:
        parser.error(f"no case matches {', '.join(unknown)}; cases: {', '.join(CASES)}")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be 1-1000 (a claim asks for that many, at most 1000)")
    return Options(
        quick=args.quick,
        only=tuple(args.only),
        seconds=args.seconds or (1.0 if args.quick else 5.0),
        clients=args.clients,
        tasks=args.tasks or (2_000 if args.quick else 20_000),
        concurrency=args.concurrency,
        latency_rate=args.latency_rate,
        latency_workers=args.latency_workers,
        drain_timeout_s=args.drain_timeout or (60.0 if args.quick else 120.0),
        profile=args.profile,
        profile_pause=args.profile_pause,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases; return 1 if any could not run."""
    run = Run(parse_args(argv))
    asyncio.run(run_cases(run))
    print_summary(run)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
