"""Benchmark of the Gift ID generator: in-process, against peers, and over HTTP.

Run from the repository root::

    .venv/bin/python bench/idgen.py              # the full run, about 25 s
    .venv/bin/python bench/idgen.py --quick      # a short smoke run
    .venv/bin/python bench/idgen.py --only http  # cases whose name starts with "http"

Cases (``--only`` takes a name or a prefix, and may be repeated):

``idgen.next_ids``
    ``IdGenerator.next_ids(4096)`` in a loop. The format allows 4,096 IDs per
    millisecond per workshop, so the rate is compared to that ``limit``
    (4,096,000/s); target ``ratio_to_limit >= 0.85``. A short run may show a
    little over 1: its first millisecond was already under way at the start.
``idgen.next_id``
    ``IdGenerator.next_id()`` in a loop; target 1,000,000 IDs/s.
``peer.snowflake-id``, ``peer.sonyflake-py``, ``peer.uuid-utils.uuid7``
    Other generators called the same way, in the same run. None of them has a
    batch call, so each is measured one call at a time (``batch_api: false``).
    ``northpole_ratio`` is our ``next_id`` rate divided by the peer's rate and
    ``northpole_batch_ratio`` our ``next_ids`` rate divided by it (above 1:
    northpole is faster). ``limit`` is the peer format's own ceiling where it
    has one: snowflake-id returns ``None`` once a millisecond's 4,096 IDs are
    used up (those calls are not counted), and sonyflake allows 256 IDs per
    10 ms, so it cannot exceed 25,600/s. The ratios need our rates, so asking
    for a peer case alone also runs (and prints) the ``idgen.*`` cases.
``http.generate_batch``
    ``northpole idgen serve`` runs as a subprocess on a free 127.0.0.1 port
    with a temporary data dir; ``wrk`` posts ``{"count": 4096}`` to
    ``/api/v1/gift-id/generate`` with an operator token. ``n`` counts IDs in
    200 responses only; target 2,000,000 IDs/s. Before the load, one response
    is checked: 4,096 distinct, increasing IDs of the right workshop.
``http.generate_single``
    The same server, posting no body (one ID per request); rate is requests/s.
``http.server_peak_rss``
    The server's peak RSS (VmHWM) after the loads above; target under 80 MiB.

Output: stdout carries one JSON line per case and nothing else; progress and
a summary table go to stderr. Every line has ``case``, ``n`` (IDs, or requests
where ``unit`` says so), ``seconds``, ``rate`` (n per second) and
``peak_rss_mb``: for in-process cases the peak of this process during that
case, for HTTP cases the server's peak so far. Lines with a target add
``target``, ``target_on`` (which key it applies to, e.g. ``"rate >="``) and
``meets_target``. HTTP load lines add what wrk saw: ``requests``,
``requests_per_s``, ``non_200``, ``socket_errors``, ``latency_ms`` (p50, p90,
p99, max) and ``clean`` (no errors at all); the batch case only meets its
target when clean. A case that could not run prints ``{"case": ...,
"error": ...}`` instead, and the script exits with status 1.

The machine is small (2 cores) and shared: wrk and the server compete for
them, and single runs vary by some percent; compare runs, not single numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import uuid_utils
from rich.table import Table
from snowflake import SnowflakeGenerator  # type: ignore[import-untyped]
from sonyflake import SonyFlake

from _common import (
    Producer,
    Server,
    WrkRequest,
    WrkResult,
    batch_calls,
    case_record,
    child_pids,
    console,
    emit,
    ensure_tool,
    peak_rss_mb,
    print_wrk_summary,
    ratio,
    reset_peak_rss,
    rss_mb,
    run_for,
    run_wrk,
    serve,
    single_calls,
    venv_tool,
    with_target,
)
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen.generator import IdGenerator
from northpole.idgen.snowflake import IDS_PER_MS, MAX_IDS_PER_SECOND, decode

WORKSHOP_ID = 1
BATCH = IDS_PER_MS  # 4096, the most one request may ask for
GENERATE_PATH = "/api/v1/gift-id/generate"

BATCH_TARGET_RATIO = 0.85
SINGLE_TARGET = 1_000_000
HTTP_BATCH_TARGET = 2_000_000
SERVER_RSS_TARGET_MB = 80.0

#: Sonyflake's format: 256 IDs per 10 ms time unit.
SONYFLAKE_LIMIT = 256 * 100

JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Options:
    """What to run and for how long."""

    quick: bool
    only: tuple[str, ...]
    cpu_seconds: float
    http_seconds: float
    connections: int
    threads: int

    def wants(self, case: str) -> bool:
        """Whether ``case`` was selected: all are without ``--only``; else by name or prefix."""
        return not self.only or any(
            case == name or (name not in ALL_CASES and case.startswith(name)) for name in self.only
        )


@dataclass
class Run:
    """The results so far; cases may read earlier ones (the peers need ours)."""

    opts: Options
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failed: bool = False

    def report(self, record: dict[str, Any]) -> None:
        """Print a case's result and keep it."""
        emit(record)
        self.results[record["case"]] = record

    def fail(self, cases: Sequence[str], exc: BaseException) -> None:
        """Report cases that could not run because of ``exc`` (its traceback once)."""
        console.print(f"[red]{', '.join(cases)} failed:[/]")
        console.print("".join(traceback.format_exception(exc)), markup=False)
        for case in cases:
            self.errors[case] = f"{type(exc).__name__}: {exc}"
            emit({"case": case, "error": self.errors[case]})
        self.failed = True


# -- in-process cases -----------------------------------------------------------


def measure(case: str, produce: Producer, seconds: float, chunk: int) -> dict[str, Any]:
    """Time ``produce`` and return the common record, with this process's peak RSS."""
    console.print(f"[bold]{case}[/]: {seconds:g} s")
    reset_peak_rss()
    timed = run_for(produce, seconds, chunk)
    return case_record(case, timed.n, timed.seconds, peak_rss_mb=peak_rss_mb(), unit="ids/s")


def check_increasing(ids: list[int]) -> None:
    """Raise unless ``ids`` is strictly increasing (so also free of repeats)."""
    bad = next((i for i in range(1, len(ids)) if ids[i] <= ids[i - 1]), None)
    if bad is not None:
        raise AssertionError(f"IDs not increasing at {bad}: {ids[bad - 1]} then {ids[bad]}")


def case_next_ids(run: Run) -> dict[str, Any]:
    """Batch calls of next_ids(4096), compared with the format's 4,096,000/s."""
    gen = IdGenerator(WORKSHOP_ID)
    check_increasing(gen.next_ids(BATCH) + gen.next_ids(BATCH))
    record = measure("idgen.next_ids", batch_calls(gen.next_ids, BATCH), run.opts.cpu_seconds, 1)
    record["batch"] = BATCH
    record["limit"] = MAX_IDS_PER_SECOND
    record["ratio_to_limit"] = ratio(record["rate"], MAX_IDS_PER_SECOND)
    with_target(record, BATCH_TARGET_RATIO, key="ratio_to_limit")
    return record


def case_next_id(run: Run) -> dict[str, Any]:
    """Single calls of next_id()."""
    gen = IdGenerator(WORKSHOP_ID)
    check_increasing([gen.next_id() for _ in range(10_000)])
    record = measure("idgen.next_id", single_calls(gen.next_id), run.opts.cpu_seconds, 1024)
    record["limit"] = MAX_IDS_PER_SECOND
    record["ratio_to_limit"] = ratio(record["rate"], MAX_IDS_PER_SECOND)
    with_target(record, SINGLE_TARGET)
    return record


@dataclass(frozen=True)
class Peer:
    """Another ID generator, measured the way ours is."""

    case: str
    make: Callable[[], Producer]
    chunk: int
    limit: int | None


def _snowflake_id() -> Producer:
    gen = SnowflakeGenerator(WORKSHOP_ID, epoch=DEFAULT_EPOCH_MS)
    return single_calls(gen.__next__, none_means_retry=True)


def _sonyflake() -> Producer:
    # An explicit machine id: the default one resolves the host name.
    return single_calls(SonyFlake(machine_id=lambda: WORKSHOP_ID).next_id)


def _uuid7() -> Producer:
    return single_calls(uuid_utils.uuid7)


PEERS = (
    Peer("peer.snowflake-id", _snowflake_id, chunk=1024, limit=MAX_IDS_PER_SECOND),
    Peer("peer.sonyflake-py", _sonyflake, chunk=64, limit=SONYFLAKE_LIMIT),
    Peer("peer.uuid-utils.uuid7", _uuid7, chunk=1024, limit=None),
)


def case_peer(run: Run, peer: Peer) -> dict[str, Any]:
    """One peer, single calls, with our rates divided by its rate."""
    record = measure(peer.case, peer.make(), run.opts.cpu_seconds, peer.chunk)
    ours_single = run.results["idgen.next_id"]["rate"]
    ours_batch = run.results["idgen.next_ids"]["rate"]
    record["batch_api"] = False
    record["limit"] = peer.limit
    record["ratio_to_limit"] = ratio(record["rate"], peer.limit)
    record["northpole_ratio"] = ratio(ours_single, record["rate"], 2)
    record["northpole_batch_ratio"] = ratio(ours_batch, record["rate"], 2)
    return record


# -- HTTP cases -------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """What the HTTP cases share: the running server, wrk, and the request headers."""

    server: Server
    wrk: str
    headers: dict[str, str]


def create_token(server: Server) -> str:
    """Mint an operator token with the server's key (same data dir)."""
    argv = [venv_tool("northpole"), "token", "create", "--role", "operator", "--sub", "bench"]
    done = subprocess.run(
        [*argv, "--ttl", "900"],
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


def check_generate(server: Server, headers: dict[str, str], count: int | None) -> None:
    """Ask for IDs once and check the answer: count, order, uniqueness, workshop."""
    body = None if count is None else {"count": count}
    response = httpx.post(server.base_url + GENERATE_PATH, json=body, headers=headers, timeout=10)
    if response.status_code != 200:
        raise AssertionError(f"generate answered {response.status_code}: {response.text[:500]}")
    texts = response.json()["ids"]
    if not all(isinstance(t, str) and t.isdigit() for t in texts):
        raise AssertionError(f"IDs must be decimal strings: {texts[:3]}")
    ids = [int(t) for t in texts]
    if len(ids) != (count or 1):
        raise AssertionError(f"asked for {count or 1} IDs, got {len(ids)}")
    check_increasing(ids)
    workshops = {decode(i).workshop_id for i in ids}
    if workshops != {WORKSHOP_ID}:
        raise AssertionError(f"IDs from workshops {workshops}, expected {WORKSHOP_ID}")


def load(run: Run, http: Http, request: WrkRequest, label: str) -> WrkResult:
    """Run wrk against the server with the run's settings and print a summary."""
    console.print(
        f"[bold]{label}[/]: wrk {run.opts.http_seconds:g} s, {run.opts.connections} connections"
    )
    result = run_wrk(
        http.server.base_url,
        request,
        duration_s=run.opts.http_seconds,
        connections=run.opts.connections,
        threads=run.opts.threads,
        wrk=http.wrk,
    )
    print_wrk_summary(label, result)
    return result


def http_record(
    run: Run, case: str, server: Server, result: WrkResult, ids_per_ok: int
) -> dict[str, Any]:
    """The common record of a load case; n counts IDs from 200 responses only."""
    record = case_record(
        case,
        result.ok * ids_per_ok,
        result.seconds,
        peak_rss_mb=peak_rss_mb(server.pid),
        unit="ids/s",
        requests=result.requests,
        requests_per_s=round(result.requests_per_s, 1),
        non_200=result.not_ok,
        socket_errors=result.socket_errors,
        errors=result.errors,
        latency_ms=result.latency_ms(),
        connections=run.opts.connections,
        threads=run.opts.threads,
    )
    record["clean"] = result.not_ok == 0 and result.socket_errors == 0
    return record


def case_http_batch(run: Run, http: Http) -> dict[str, Any]:
    """POST {"count": 4096} under load."""
    check_generate(http.server, http.headers, BATCH)
    request = WrkRequest(GENERATE_PATH, "POST", f'{{"count": {BATCH}}}', http.headers)
    result = load(run, http, request, "http.generate_batch")
    record = http_record(run, "http.generate_batch", http.server, result, BATCH)
    record["batch"] = BATCH
    record["limit"] = MAX_IDS_PER_SECOND
    record["ratio_to_limit"] = ratio(record["rate"], MAX_IDS_PER_SECOND)
    with_target(record, HTTP_BATCH_TARGET)
    record["meets_target"] = record["meets_target"] and record["clean"]
    return record


def case_http_single(run: Run, http: Http) -> dict[str, Any]:
    """POST with no body (one ID per request) under load."""
    check_generate(http.server, http.headers, None)
    request = WrkRequest(GENERATE_PATH, "POST", None, http.headers)
    result = load(run, http, request, "http.generate_single")
    return http_record(run, "http.generate_single", http.server, result, 1)


def case_server_rss(run: Run, http: Http) -> dict[str, Any]:
    """The server's peak RSS after the loads that ran before it."""
    server = http.server
    loads = [r for c, r in run.results.items() if c.startswith("http.generate")]
    record = case_record(
        "http.server_peak_rss",
        sum(r["requests"] for r in loads),
        sum(r["seconds"] for r in loads),
        peak_rss_mb=peak_rss_mb(server.pid),
        unit="requests/s",
        rss_mb=rss_mb(server.pid),
        child_processes=len(child_pids(server.pid)),
    )
    with_target(record, SERVER_RSS_TARGET_MB, key="peak_rss_mb", higher_is_better=False)
    return record


#: In the order they run: the RSS case last, after the loads.
HTTP_CASES: dict[str, Callable[[Run, Http], dict[str, Any]]] = {
    "http.generate_batch": case_http_batch,
    "http.generate_single": case_http_single,
    "http.server_peak_rss": case_server_rss,
}
ALL_CASES = ("idgen.next_ids", "idgen.next_id", *(p.case for p in PEERS), *HTTP_CASES)


def run_http(run: Run) -> None:
    """Start one server and run the selected HTTP cases against it, in order."""
    wanted = [case for case in HTTP_CASES if run.opts.wants(case)]
    if not wanted:
        return
    with contextlib.ExitStack() as stack:
        try:
            wrk = ensure_tool("wrk")
            argv = [venv_tool("northpole"), "idgen", "serve", "--workshop-id", str(WORKSHOP_ID)]
            server = stack.enter_context(serve(argv, ready_path="/readyz"))
            console.print(f"server pid {server.pid} ready at {server.base_url}")
            token = create_token(server)
        except Exception as exc:
            run.fail(wanted, exc)
            return
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        http = Http(server, wrk, headers)
        for case in wanted:
            try:
                run.report(HTTP_CASES[case](run, http))
            except Exception as exc:
                run.fail([case], exc)
    if not server.stopped_on_sigterm:
        console.print("[red]the server did not stop on SIGTERM[/]")
        run.failed = True


# -- driver -------------------------------------------------------------------------


def in_process_cases(run: Run) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """The selected in-process cases, ours first when a peer needs them."""
    needs_ours = any(run.opts.wants(p.case) for p in PEERS)
    if needs_ours or run.opts.wants("idgen.next_ids"):
        yield "idgen.next_ids", functools.partial(case_next_ids, run)
    if needs_ours or run.opts.wants("idgen.next_id"):
        yield "idgen.next_id", functools.partial(case_next_id, run)
    for peer in PEERS:
        if run.opts.wants(peer.case):
            yield peer.case, functools.partial(case_peer, run, peer)


def print_summary(run: Run) -> None:
    """A table of rates and targets, on stderr."""
    table = Table(title="bench/idgen.py" + (" (quick)" if run.opts.quick else ""))
    table.add_column("case", no_wrap=True)
    for column in ("rate /s", "peak RSS MiB", "target", "met"):
        table.add_column(column, justify="right")
    for case, r in run.results.items():
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.get("meets_target")]
        target = f"{r['target_on']} {r['target']:,}" if "target" in r else ""
        rate = "" if r["rate"] is None else f"{r['rate']:,.0f}"
        table.add_row(case, rate, str(r["peak_rss_mb"]), target, met)
    for case in run.errors:
        table.add_row(case, "[red]error[/]", "", "", "")
    console.print(table)


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
    parser.add_argument("--seconds", type=float, help="per in-process case (default 2, quick 0.3)")
    parser.add_argument("--http-seconds", type=float, help="per HTTP case (default 5, quick 1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if not any(c.startswith(n) for c in ALL_CASES)]
    if unknown:
        parser.error(f"no case matches {', '.join(unknown)}; cases: {', '.join(ALL_CASES)}")
    return Options(
        quick=args.quick,
        only=tuple(args.only),
        cpu_seconds=args.seconds or (0.3 if args.quick else 2.0),
        http_seconds=args.http_seconds or (1.0 if args.quick else 5.0),
        connections=args.connections,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases; return 1 if any could not run."""
    run = Run(parse_args(argv))
    for case, fn in in_process_cases(run):
        try:
            run.report(fn())
        except Exception as exc:
            run.fail([case], exc)
    run_http(run)
    print_summary(run)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
