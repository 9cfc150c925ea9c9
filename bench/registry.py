"""Benchmark of the gift registry: batch ingest, lookups, listings and the outbox.

Run from the repository root::

    .venv/bin/python bench/registry.py                # the full run (1,000,000 rows)
    .venv/bin/python bench/registry.py --quick        # a short smoke run (50,000 rows)
    .venv/bin/python bench/registry.py --only registry.outbox

A throwaway PostgreSQL 15 (``initdb`` + ``postgres`` as the ``postgres`` user,
127.0.0.1 on a free port, default ``fsync=on``) serves the PostgreSQL cases;
``northpole up`` (every part, the registry on that database or on SQLite)
runs as a subprocess on a free port with a temporary data dir and is driven
over HTTP with aiohttp and an operator token. Cases (``--only`` takes a name
or a prefix, and may be repeated):

``registry.ingest_postgres``, ``registry.ingest_sqlite``
    ``--clients`` concurrent clients post ``{"gifts": [10,000 gifts]}`` to
    ``POST /api/v1/gifts`` in closed loops until ``--rows`` gifts are stored;
    rate is gifts/s. Target 50,000 gifts/s into PostgreSQL (none for SQLite).
``registry.lookup_cached``, ``registry.lookup_uncached``
    With ``--rows`` gifts stored (PostgreSQL, by the ingest case), one client
    reads ``--lookups`` random ids one request at a time with
    ``GET /api/v1/gifts/{id}``; latency per request, p50/p99 in ms. Cached:
    a server with a cache as large as the table, measured after one warm-up
    pass over the same ids. Uncached: a server with ``cache_size=0``. Target
    p99 under 5 ms.
``registry.list_by_recipient``
    ``GET /api/v1/gifts?recipient_id=...&limit=100`` for random recipients
    (each has about 10 gifts), one at a time; p99 in ms.
``registry.outbox_postgres``, ``registry.outbox_sqlite``
    In this process: ``--outbox-rows`` gifts are created (their
    ``gift.created`` rows wait in the outbox), then an ``OutboxRelay`` moves
    them to a ``MemoryStream`` in batches of 1,000; rate is events/s.

Output: stdout carries one JSON line per case and nothing else; progress
goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds queue.py, which would hide the standard library's queue module if
# bench/ came first on sys.path (as it does for a script): move it to the end.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path += [str(_BENCH), str(_BENCH.parent / "tests")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from _common import (  # noqa: E402
    case_record,
    console,
    emit,
    mint_token,
    peak_rss_mb,
    serve,
    venv_tool,
    with_target,
)
from postgres_servers import PostgresProcess, remove, start_postgres  # noqa: E402

BATCH = 10_000
RECIPIENTS_PER_ROW = 10  # about this many gifts per recipient


@dataclass
class Options:
    """Command-line options."""

    quick: bool
    rows: int
    clients: int
    lookups: int
    outbox_rows: int
    only: list[str] = field(default_factory=list)

    def wants(self, case: str) -> bool:
        """Whether ``case`` was asked for."""
        return not self.only or any(case.startswith(prefix) for prefix in self.only)


def percentile_ms(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (seconds) in ms."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, int(q * len(ordered)))
    return round(ordered[index] * 1000, 3)


# -- the server ---------------------------------------------------------------


@contextmanager
def app_server(env: dict[str, str]) -> Iterator[tuple[str, str, int]]:
    """Start ``northpole up`` (every part; the registry on ``env``'s database); yield
    (base URL, operator token, pid)."""
    env = {"NORTHPOLE_LOG_LEVEL": "WARNING", **env}
    with serve([venv_tool("northpole"), "up"], extra_env=env, ready_timeout_s=60) as server:
        yield server.base_url, mint_token(server, "operator"), server.pid


# -- cases -------------------------------------------------------------------------


def gift_batch(start: int, count: int, recipients: int) -> bytes:
    """One create body of ``count`` gifts."""
    gifts = [
        {"gift_type": "toy", "recipient_id": f"child-{(start + i) % recipients}"}
        for i in range(count)
    ]
    return orjson.dumps({"gifts": gifts})


async def ingest(base: str, token: str, rows: int, clients: int) -> tuple[float, list[str]]:
    """Post ``rows`` gifts in batches from ``clients`` clients; return seconds and the ids."""
    recipients = max(1, rows // RECIPIENTS_PER_ROW)
    bodies = [gift_batch(i * BATCH, BATCH, recipients) for i in range(4)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    todo = list(range(0, rows, BATCH))
    ids: list[str] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while todo:
            start = todo.pop()
            count = min(BATCH, rows - start)
            body = (
                bodies[start // BATCH % 4]
                if count == BATCH
                else gift_batch(start, count, recipients)
            )
            async with session.post(f"{base}/api/v1/gifts", data=body, headers=headers) as resp:
                payload = await resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"create answered {resp.status}: {payload[:300]!r}")
                ids.extend(g["id"] for g in orjson.loads(payload)["gifts"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - started, ids


async def latencies(base: str, token: str, paths: list[str]) -> list[float]:
    """GET each path one at a time; return each request's seconds."""
    headers = {"Authorization": f"Bearer {token}"}
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        for path in paths:
            started = time.perf_counter()
            async with session.get(base + path, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path} answered {resp.status}")
            out.append(time.perf_counter() - started)
    return out


def outbox_settled(base: str, token: str, timeout_s: float = 300.0) -> None:
    """Wait until the server's relay has published every outbox row left by earlier cases.

    Lookups measured while a relay drains a million rows measure the relay too.
    """
    import httpx

    def relayed() -> float:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("registry_outbox_relayed_total "):
                return float(line.split()[1])
        return 0.0

    deadline = time.monotonic() + timeout_s
    last = -1.0
    while time.monotonic() < deadline:
        now = relayed()
        if now == last:
            return
        last = now
        time.sleep(2.0)
    raise TimeoutError("the outbox relay did not settle")


def latency_record(case: str, samples: list[float], **extra: Any) -> dict[str, Any]:
    """A latency case's JSON line."""
    record = case_record(case, len(samples), sum(samples), **extra)
    record["loadavg_1m"] = os.getloadavg()[0]
    record.update(
        p50_ms=percentile_ms(samples, 0.50),
        p99_ms=percentile_ms(samples, 0.99),
        mean_ms=round(statistics.fmean(samples) * 1000, 3),
    )
    return record


def ingest_case(opts: Options, case: str, env: dict[str, str]) -> list[str]:
    """Run one ingest case; return the stored ids."""
    with app_server(env) as (base, token, pid):
        seconds, ids = asyncio.run(ingest(base, token, opts.rows, opts.clients))
        record = case_record(case, len(ids), seconds, clients=opts.clients, batch=BATCH)
        record["server_peak_rss_mb"] = peak_rss_mb(pid)
        if case.endswith("postgres"):
            with_target(record, 50_000)
        emit(record)
    return ids


def lookup_cases(opts: Options, env: dict[str, str], ids: list[str]) -> None:
    """Lookups with and without the cache, and listings by recipient."""
    rng = random.Random(7)
    sample = [f"/api/v1/gifts/{rng.choice(ids)}" for _ in range(opts.lookups)]
    cached_env = {
        **env,
        "NORTHPOLE_REGISTRY__CACHE_SIZE": str(opts.rows),
        "NORTHPOLE_REGISTRY__CACHE_TTL_S": "3600",
    }
    if opts.wants("registry.lookup_cached") or opts.wants("registry.list_by_recipient"):
        with app_server(cached_env) as (base, token, _):
            outbox_settled(base, token)
            if opts.wants("registry.lookup_cached"):
                asyncio.run(latencies(base, token, sample))  # warm-up pass fills the cache
                record = latency_record(
                    "registry.lookup_cached",
                    asyncio.run(latencies(base, token, sample)),
                    rows=opts.rows,
                )
                with_target(record, 5.0, key="p99_ms", higher_is_better=False)
                emit(record)
            if opts.wants("registry.list_by_recipient"):
                recipients = max(1, opts.rows // RECIPIENTS_PER_ROW)
                paths = [
                    f"/api/v1/gifts?recipient_id=child-{rng.randrange(recipients)}&limit=100"
                    for _ in range(max(100, opts.lookups // 5))
                ]
                emit(
                    latency_record(
                        "registry.list_by_recipient",
                        asyncio.run(latencies(base, token, paths)),
                        rows=opts.rows,
                    )
                )
    if opts.wants("registry.lookup_uncached"):
        with app_server({**env, "NORTHPOLE_REGISTRY__CACHE_SIZE": "0"}) as (base, token, _):
            outbox_settled(base, token)
            record = latency_record(
                "registry.lookup_uncached",
                asyncio.run(latencies(base, token, sample)),
                rows=opts.rows,
            )
            with_target(record, 5.0, key="p99_ms", higher_is_better=False)
            emit(record)


async def outbox_rate(case: str, repo: Any, rows: int) -> dict[str, Any]:
    """Create ``rows`` gifts, then time relaying their events to a MemoryStream."""
    from northpole.bus.memory import MemoryStream
    from northpole.bus.outbox import OutboxRelay
    from northpole.core.settings import DEFAULT_EPOCH_MS
    from northpole.idgen import IdGenerator
    from northpole.registry.model import NewGift, new_gift

    ids = IdGenerator(workshop_id=11)
    for start in range(0, rows, BATCH):
        batch = ids.next_ids(min(BATCH, rows - start))
        await repo.create(
            [new_gift(i, NewGift("toy", "c"), epoch_ms=DEFAULT_EPOCH_MS) for i in batch]
        )
    stream = MemoryStream()
    relay = OutboxRelay(repo.outbox, stream, batch=1_000)
    started = time.perf_counter()
    moved = await relay.drain()
    seconds = time.perf_counter() - started
    if moved != rows or stream.last_seq != rows:
        raise RuntimeError(f"relayed {moved} of {rows} events")
    return case_record(case, moved, seconds, relay_batch=1_000)


def outbox_cases(opts: Options, postgres_url: str | None) -> None:
    """Events per second through the outbox, PostgreSQL and SQLite."""
    from northpole.core.settings import DEFAULT_EPOCH_MS
    from northpole.registry.postgres_repository import PostgresGiftRepository
    from northpole.registry.sqlite_repository import SqliteGiftRepository

    async def run_postgres(url: str) -> dict[str, Any]:
        async with PostgresGiftRepository(url, epoch_ms=DEFAULT_EPOCH_MS) as repo:
            return await outbox_rate("registry.outbox_postgres", repo, opts.outbox_rows)

    async def run_sqlite(path: Path) -> dict[str, Any]:
        async with SqliteGiftRepository(path) as repo:
            return await outbox_rate("registry.outbox_sqlite", repo, opts.outbox_rows)

    if postgres_url is not None and opts.wants("registry.outbox_postgres"):
        emit(asyncio.run(run_postgres(postgres_url)))
    if opts.wants("registry.outbox_sqlite"):
        with tempfile.TemporaryDirectory(prefix="northpole-bench-") as tmp:
            emit(asyncio.run(run_sqlite(Path(tmp) / "registry.db")))


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    """Read the options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--rows", type=int, help="gifts stored (default 1,000,000; quick 50,000)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent ingest clients")
    parser.add_argument("--lookups", type=int, help="lookups per case (default 20,000)")
    parser.add_argument("--outbox-rows", type=int, help="events relayed (default 200,000)")
    parser.add_argument("--only", action="append", default=[], help="case name or prefix")
    args = parser.parse_args(argv)
    return Options(
        quick=args.quick,
        rows=args.rows or (50_000 if args.quick else 1_000_000),
        clients=args.clients,
        lookups=args.lookups or (2_000 if args.quick else 20_000),
        outbox_rows=args.outbox_rows or (20_000 if args.quick else 200_000),
        only=args.only,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases."""
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    from northpole.core.logging import configure_logging

    configure_logging(service="bench", level="WARNING", stream=sys.stderr)  # stdout: JSON only
    server: PostgresProcess | None = None
    try:
        server = start_postgres(fsync=True)
        url = server.url(server.create_database())
        env = {"NORTHPOLE_REGISTRY__DATABASE_URL": url, "NORTHPOLE_LOG_LEVEL": "WARNING"}
        console.print(f"PostgreSQL on port {server.port} (fsync on)")
        needs_rows = any(
            opts.wants(c)
            for c in ("registry.ingest_postgres", "registry.lookup", "registry.list_by_recipient")
        )
        ids: list[str] = []
        if needs_rows:
            ids = ingest_case(opts, "registry.ingest_postgres", env)
            lookup_cases(opts, env, ids)
        if opts.wants("registry.ingest_sqlite"):
            ingest_case(opts, "registry.ingest_sqlite", {"NORTHPOLE_LOG_LEVEL": "WARNING"})
        outbox_url = server.url(server.create_database())
        outbox_cases(opts, outbox_url)
    finally:
        if server is not None:
            remove(server)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
