"""Helpers shared by the bench scripts: output, timing, memory, processes and load.

Conventions every bench script follows:

* stdout carries only JSON lines, one per case (see :func:`emit`), so the
  output can be piped into ``jq`` or appended to a results file;
* human-readable progress goes to stderr through :data:`console`;
* servers run on 127.0.0.1 only, on a free port, and are always stopped;
* every loop and subprocess is bounded in time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

#: Progress and summaries for people; stdout stays pure JSON lines.
console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Produces some IDs (or does some work units) and returns how many it made.
Producer = Callable[[int], int]


# -- output -----------------------------------------------------------------


def emit(record: Mapping[str, Any]) -> None:
    """Write one case's result to stdout as a single JSON line, and flush it."""
    sys.stdout.write(json.dumps(record, allow_nan=False) + "\n")
    sys.stdout.flush()


def ratio(numerator: float, denominator: float | None, digits: int = 3) -> float | None:
    """Return ``numerator / denominator`` rounded, or ``None`` when it is undefined."""
    if not denominator:
        return None
    return round(numerator / denominator, digits)


def case_record(case: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """Build the common part of a result: case, n, seconds and rate (n per second)."""
    rate = round(n / seconds, 1) if seconds > 0 else None
    return {"case": case, "n": n, "seconds": round(seconds, 3), "rate": rate, **extra}


def with_target(
    record: dict[str, Any], target: float, *, key: str = "rate", higher_is_better: bool = True
) -> None:
    """Add ``target``, what it applies to and ``meets_target`` to ``record`` (in place).

    ``target_on`` reads like ``"rate >="`` or ``"peak_rss_mb <"``.
    """
    value = record[key]
    record["target"] = target
    record["target_on"] = f"{key} {'>=' if higher_is_better else '<'}"
    if value is None:
        record["meets_target"] = None
    else:
        record["meets_target"] = value >= target if higher_is_better else value < target


# -- timing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timed:
    """How many units a timed loop produced, and in how long."""

    n: int
    seconds: float

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.n / self.seconds if self.seconds > 0 else math.nan


def run_for(produce: Producer, duration_s: float, chunk: int) -> Timed:
    """Call ``produce(chunk)`` until ``duration_s`` has passed; sum what it returns.

    The clock is read once per chunk, so pick a chunk that takes well under a
    millisecond for cheap calls and 1 for expensive ones. A full collection runs
    first so garbage from an earlier case does not land in this one.
    """
    gc.collect()
    produced = 0
    start = time.perf_counter()
    deadline = start + duration_s
    while True:
        produced += produce(chunk)
        now = time.perf_counter()
        if now >= deadline:
            return Timed(produced, now - start)


def single_calls(fn: Callable[[], object], *, none_means_retry: bool = False) -> Producer:
    """Make a producer that calls ``fn`` once per unit and keeps the results.

    With ``none_means_retry``, a ``None`` result counts as no ID (the generator
    asked its caller to come back later), so the rate counts real IDs only.
    """

    def produce(k: int) -> int:
        out = [fn() for _ in repeat(None, k)]
        return k - out.count(None) if none_means_retry else k

    return produce


def batch_calls(fn: Callable[[int], list[Any]], batch: int) -> Producer:
    """Make a producer that calls ``fn(batch)`` once per unit and counts what it returns."""

    def produce(k: int) -> int:
        return sum(len(fn(batch)) for _ in repeat(None, k))

    return produce


# -- memory -----------------------------------------------------------------


def _status_kb(pid: int | str, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Return a process's peak resident set size (VmHWM) in MiB, ``None`` if unreadable."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def rss_mb(pid: int | str = "self") -> float | None:
    """Return a process's current resident set size (VmRSS) in MiB, ``None`` if unreadable."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5), so peaks are per case.

    Returns whether it worked; when it did not, :func:`peak_rss_mb` reports the
    peak since the process started.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def child_pids(pid: int) -> list[int]:
    """Return the direct children of ``pid`` (empty if it has none or is gone)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text(encoding="ascii")
            children.extend(int(p) for p in text.split())
    return children


def cpu_seconds(pid: int | str = "self") -> float | None:
    """Return the CPU time (user + system) a process has used, ``None`` if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # Fields after the command name (which may hold spaces), from field 3 on.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- network and processes ----------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def venv_tool(name: str) -> str:
    """Return the path of a console script installed next to this interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither next to {sys.executable} nor on PATH")
    return found


def ensure_debs(*packages: str) -> None:
    """Install missing Debian packages with ``scripts/ensure-debs.sh`` (output to stderr)."""
    script = REPO_ROOT / "scripts" / "ensure-debs.sh"
    subprocess.run(["bash", str(script), *packages], check=True, stdout=sys.stderr, timeout=600)


def ensure_tool(tool: str, package: str | None = None) -> str:
    """Return the path of ``tool``, installing its Debian package first if it is missing."""
    found = shutil.which(tool)
    if found is None:
        console.print(f"[yellow]{tool} not found; installing the Debian package[/]")
        ensure_debs(package or tool)
        found = shutil.which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} is still not on PATH after installing {package or tool}")
    return found


@dataclass
class Server:
    """A server subprocess started by :func:`serve`."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    env: dict[str, str]
    #: Set when it has been stopped: False if SIGTERM was not enough.
    stopped_on_sigterm: bool | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of what the server wrote (stdout and stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_ready(server: Server, path: str, timeout_s: float) -> None:
    """Poll ``GET path`` until it answers 200; raise if the server exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {server.proc.returncode} before it was ready; "
                    f"its last output:\n{server.log_tail() or '(none)'}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(path).status_code == 200:
                    return
            time.sleep(0.05)
    raise TimeoutError(
        f"{server.base_url}{path} not ready after {timeout_s} s:\n{server.log_tail()}"
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> bool:
    """Send SIGTERM and wait; SIGKILL if it has not exited in ``timeout_s``.

    Returns whether it exited without needing SIGKILL. (Uvicorn re-raises the
    SIGTERM after its graceful shutdown, so an exit code of -15 is normal.)
    """
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        console.print(f"[red]pid {proc.pid} ignored SIGTERM for {timeout_s} s; killing it[/]")
        proc.kill()
        proc.wait(timeout=timeout_s)
        return False
    return True


@contextlib.contextmanager
def serve(
    argv: list[str],
    *,
    ready_path: str = "/readyz",
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout_s: float = 30.0,
    stop_timeout_s: float = 10.0,
) -> Iterator[Server]:
    """Run ``argv + ["--host", LOOPBACK, "--port", port]`` with a fresh data dir.

    ``NORTHPOLE_DATA_DIR`` points at a temporary directory that is removed
    afterwards; the server's output goes to a log file in it. On exit the
    server gets SIGTERM (then SIGKILL if it hangs), whatever happened.
    """
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="northpole-bench-") as tmp:
        env = {**os.environ, "NORTHPOLE_DATA_DIR": str(Path(tmp) / "data"), **(extra_env or {})}
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*argv, "--host", LOOPBACK, "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(proc, f"http://{LOOPBACK}:{port}", log_path, env)
        try:
            wait_ready(server, ready_path, ready_timeout_s)
            yield server
        finally:
            server.stopped_on_sigterm = stop_process(proc, stop_timeout_s)
            console.print(f"server pid {proc.pid} exited with code {proc.returncode}")


JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def mint_token(server: Server, role: str, sub: str = "bench", ttl_s: int = 900) -> str:
    """Mint a token for ``role`` with the server's key (same data dir, ``token create``)."""
    argv = [venv_tool("northpole"), "token", "create", "--role", role, "--sub", sub]
    done = subprocess.run(
        [*argv, "--ttl", str(ttl_s)],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tokens = [line.strip() for line in done.stdout.splitlines() if JWT_RE.match(line.strip())]
    if not tokens:
        raise RuntimeError(f"no JWT in the output of token create:\n{done.stdout}{done.stderr}")
    return tokens[-1]


# -- profiling with py-spy ----------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: Path, *, rate: int = 200, pause: bool = False) -> Iterator[None]:
    """Sample ``pid`` with ``py-spy record --format raw`` while the block runs.

    By default samples are taken without pausing the process (``--nonblocking``:
    less overhead, but a stack may be read while it changes); ``pause`` makes
    py-spy stop the process for each sample instead. Idle threads are left out.
    On exit py-spy gets SIGINT and writes ``output`` (one line per distinct
    stack: ``thread;frame;frame;... count``, root first).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [venv_tool("py-spy"), "record", "--pid", str(pid), "--rate", str(rate)]
    argv += ["--format", "raw", "--threads", "--output", str(output)]
    if not pause:
        argv.append("--nonblocking")
    with output.with_suffix(".log").open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        time.sleep(0.2)  # let it attach
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_LINE_NO = re.compile(r":\d+\)$")


def _frame_name(frame: str) -> str:
    """``"f (pkg/mod.py:12)"`` -> ``"f (pkg/mod.py)"``: one name per function."""
    return _LINE_NO.sub(")", frame.strip())


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Read a py-spy raw profile: samples, and the top functions by self and by total time.

    Percentages are of all samples. "Self" counts the innermost frame of each
    sample; "total" counts every function once per sample it appears in. The
    ``thread (0x...)`` roots added by ``--threads`` give the per-thread split.
    """
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    threads: dict[str, int] = {}
    samples = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            thread = frames.pop(0)
            threads[thread] = threads.get(thread, 0) + count
        if not frames:
            continue
        names = [_frame_name(f) for f in frames]
        self_n[names[-1]] = self_n.get(names[-1], 0) + count
        for name in set(names):
            total_n[name] = total_n.get(name, 0) + count

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [(name, round(100 * n / samples, 1)) for name, n in best]

    return {
        "samples": samples,
        "threads_pct": dict(ranked(threads)) if samples else {},
        "self_pct": ranked(self_n) if samples else [],
        "total_pct": ranked(total_n) if samples else [],
    }


# -- load generation with wrk ---------------------------------------------------

#: Lua for wrk: sets the request, counts 200 responses per thread, prints JSON at the end.
_WRK_LUA = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end

function done(summary, latency, requests)
  local ok_total = 0
  for _, t in ipairs(threads) do ok_total = ok_total + t:get("ok") end
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us": %d, "requests": %d, "bytes": %d, "ok": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\\n',
    MARKER, summary.duration, summary.requests, summary.bytes, ok_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""
_WRK_MARKER = "WRK_JSON "


@dataclass(frozen=True)
class WrkRequest:
    """One request that wrk sends over and over."""

    path: str
    method: str = "GET"
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def lua(self) -> str:
        """Return the Lua that configures this request in wrk."""
        lines = [f"wrk.method = {_lua_str(self.method)}", f"MARKER = {_lua_str(_WRK_MARKER)}"]
        if self.body is not None:
            lines.append(f"wrk.body = {_lua_str(self.body)}")
        lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in self.headers.items()]
        return "\n".join(lines) + "\n" + _WRK_LUA


def _lua_str(value: str) -> str:
    """Quote a string for Lua (for printable ASCII, JSON's escapes are valid Lua ones)."""
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"wrk Lua strings must be printable ASCII: {value!r}")
    return json.dumps(value)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured (parsed from the JSON its ``done`` hook prints)."""

    seconds: float
    requests: int
    ok: int
    bytes: int
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def requests_per_s(self) -> float:
        """Completed requests per second, whatever their status."""
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors (status errors not included)."""
        return sum(v for k, v in self.errors.items() if k != "status")

    @property
    def not_ok(self) -> int:
        """Completed responses whose status was not 200."""
        return self.requests - self.ok

    def latency_ms(self) -> dict[str, float]:
        """Latency statistics in milliseconds."""
        return {k: round(v / 1000, 2) for k, v in self.latency_us.items()}


def run_wrk(
    base_url: str,
    request: WrkRequest,
    *,
    duration_s: float,
    connections: int,
    threads: int = 1,
    timeout_s: float = 5.0,
    wrk: str = "wrk",
) -> WrkResult:
    """Drive ``request`` at ``base_url`` with wrk for ``duration_s`` and return the numbers."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-") as script:
        script.write(request.lua())
        script.flush()
        argv = [
            wrk,
            f"--threads={threads}",
            f"--connections={connections}",
            f"--duration={max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "--latency",
            f"--script={script.name}",
            base_url + request.path,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return _parse_wrk(done.stdout)


def _parse_wrk(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(_WRK_MARKER):
            data = json.loads(line[len(_WRK_MARKER) :])
            return WrkResult(
                seconds=data["duration_us"] / 1e6,
                requests=data["requests"],
                ok=data["ok"],
                bytes=data["bytes"],
                errors=data["errors"],
                latency_us=data["latency_us"],
            )
    raise RuntimeError(f"no {_WRK_MARKER.strip()} line in wrk's output:\n{stdout}")


def print_wrk_summary(label: str, result: WrkResult) -> None:
    """Print a one-line human summary of a wrk run to stderr."""
    lat = result.latency_ms()
    console.print(
        f"{label}: {result.requests} requests in {result.seconds:.2f} s "
        f"({result.requests_per_s:,.0f}/s), non-200 {result.not_ok}, "
        f"socket errors {result.socket_errors}, p50 {lat['p50']} ms, p99 {lat['p99']} ms"
    )
