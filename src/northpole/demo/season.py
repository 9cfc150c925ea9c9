"""One season, driven through the public API of a running northpole.

1. Register the children's gifts (``POST /api/v1/gifts`` in batches).
2. Give each gift its four tasks, build -> wrap -> load -> deliver, chained by
   dependencies (``POST /api/v1/tasks`` in batches, with batch-local refs); a
   share of them is flaky and fails its first attempt.
3. Run a pool of elves (a worker pool over HTTP) until every gift is delivered
   or failed, following ``GET /api/v1/gifts/stats``.
4. Run a gift exchange among the elves: households never draw each other,
   every elf gets a key pair, the match is committed sealed, and each elf opens
   their own match with their own token and checks its commitment.
5. Read everything back for the report: gifts by status, task timings from
   a sample of tasks, the retries, the matching time.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from northpole.core.auth import Role
from northpole.core.errors import Unavailable
from northpole.demo.client import Api
from northpole.demo.handlers import STAGES, elves
from northpole.exchange.crypto import (
    new_private_key,
    open_match,
    public_key_b64,
    verify_commitment,
)
from northpole.tasks.backends import HttpBackend
from northpole.tasks.worker import WorkerPool

GIFT_TYPES = ("teddy bear", "train set", "kite", "book", "puzzle", "sled", "drum", "paint box")
GIFT_BATCH = 1_000
TASK_BATCH_GIFTS = 250  # 1,000 tasks per submit
SAMPLE_GIFTS = 200

TokenFor = Callable[[str, Role], str]


@dataclass(frozen=True, slots=True)
class Plan:
    """How big a season to run."""

    gifts: int = 10_000
    elves: int = 30
    households: int = 8
    concurrency: int = 200
    flaky_share: float = 0.02
    timeout_s: float = 600.0


@dataclass(slots=True)
class Report:
    """What the season did, read back through the API."""

    gifts: int = 0
    register_s: float = 0.0
    tasks: int = 0
    submit_s: float = 0.0
    drain_s: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)
    flaky: int = 0
    retried_ok: int = 0
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    exchange_id: str = ""
    exchange_phase: str = ""
    participants: int = 0
    match_s: float = 0.0
    opened: int = 0
    commitments_ok: int = 0


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def _ms(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp() * 1000


async def register_gifts(api: Api, plan: Plan, progress: Progress, rng: random.Random) -> list[str]:
    """Register ``plan.gifts`` gifts; return their ids."""
    bar = progress.add_task("registering gifts", total=plan.gifts)
    ids: list[str] = []
    for start in range(0, plan.gifts, GIFT_BATCH):
        size = min(GIFT_BATCH, plan.gifts - start)
        body = {
            "gifts": [
                {"gift_type": rng.choice(GIFT_TYPES), "recipient_id": f"child-{start + i:06d}"}
                for i in range(size)
            ]
        }
        answer = await api.call("POST", "/api/v1/gifts", body)
        ids += [gift["id"] for gift in answer["gifts"]]
        progress.advance(bar, size)
    return ids


async def submit_tasks(
    api: Api, gift_ids: Sequence[str], plan: Plan, progress: Progress, rng: random.Random
) -> tuple[dict[str, list[str]], set[str]]:
    """Submit each gift's chain of tasks; return task ids by gift, and the flaky ones."""
    bar = progress.add_task("submitting tasks", total=len(gift_ids) * len(STAGES))
    by_gift: dict[str, list[str]] = {}
    flaky: set[str] = set()
    for start in range(0, len(gift_ids), TASK_BATCH_GIFTS):
        chunk = gift_ids[start : start + TASK_BATCH_GIFTS]
        tasks: list[dict[str, Any]] = []
        for n, gift in enumerate(chunk):
            for s, stage in enumerate(STAGES):
                task: dict[str, Any] = {
                    "gift_id": gift,
                    "task_type": stage,
                    "ref": f"{stage}-{n}",
                    "max_retries": 3,
                    "idempotency_key": f"{gift}-{stage}",
                }
                if s:
                    task["dependencies"] = [f"{STAGES[s - 1]}-{n}"]
                if rng.random() < plan.flaky_share:
                    task["metadata"] = {"flaky": "1"}
                tasks.append(task)
        answer = await api.call("POST", "/api/v1/tasks", {"tasks": tasks})
        for sent, stored in zip(tasks, answer["tasks"], strict=True):
            by_gift.setdefault(sent["gift_id"], []).append(stored["id"])
            if "metadata" in sent:
                flaky.add(stored["id"])
        progress.advance(bar, len(tasks))
    return by_gift, flaky


async def drain(
    api: Api, worker_api_token: str, plan: Plan, gifts: int, progress: Progress
) -> dict[str, int]:
    """Run the elves until every gift is delivered or failed; return gifts by status."""
    backend = HttpBackend(api.base_url, worker_api_token)
    pool = WorkerPool(elves, backend, group="elves", concurrency=plan.concurrency)
    running = asyncio.create_task(pool.run())
    bar = progress.add_task("delivering gifts", total=gifts)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + plan.timeout_s
    try:
        while True:
            by_status = (await api.call("GET", "/api/v1/gifts/stats"))["by_status"]
            done = by_status.get("DELIVERED", 0) + by_status.get("FAILED", 0)
            progress.update(bar, completed=done)
            if done >= gifts:
                return dict(by_status)
            if running.done():
                running.result()  # raises what stopped the pool
                raise Unavailable("the worker pool stopped before the season ended")
            if loop.time() > give_up:
                raise Unavailable(f"the season did not end within {plan.timeout_s:.0f} s")
            await asyncio.sleep(0.25)
    finally:
        pool.stop()
        await asyncio.gather(running, return_exceptions=True)
        await backend.close()


async def read_timings(
    api: Api, by_gift: dict[str, list[str]], flaky: set[str], rng: random.Random
) -> tuple[dict[str, dict[str, float]], int]:
    """Task timings from a sample of gifts, and how many flaky tasks completed on a retry."""
    sample = rng.sample(sorted(by_gift), min(SAMPLE_GIFTS, len(by_gift)))
    wanted = sorted({t for g in sample for t in by_gift[g]} | flaky)
    semaphore = asyncio.Semaphore(16)

    async def read(task_id: str) -> dict[str, Any]:
        async with semaphore:
            found: dict[str, Any] = await api.call("GET", f"/api/v1/tasks/{task_id}")
            return found

    tasks = {t["id"]: t for t in await asyncio.gather(*(read(i) for i in wanted))}
    run: list[float] = []
    for task in tasks.values():
        started, finished = _ms(task.get("started_at")), _ms(task.get("finished_at"))
        if started is not None and finished is not None:
            run.append(finished - started)
    per_gift: list[float] = []
    for gift in sample:
        first, last = tasks[by_gift[gift][0]], tasks[by_gift[gift][-1]]
        created, finished = _ms(first.get("created_at")), _ms(last.get("finished_at"))
        if created is not None and finished is not None:
            per_gift.append(finished - created)
    retried_ok = sum(
        1 for t in flaky if tasks[t]["state"] == "COMPLETED" and tasks[t]["attempts"] >= 2
    )
    timings = {
        "task, start to finish": {"p50": _pct(run, 0.5), "p99": _pct(run, 0.99), "n": len(run)},
        "gift, first submit to delivered": {
            "p50": _pct(per_gift, 0.5),
            "p99": _pct(per_gift, 0.99),
            "n": len(per_gift),
        },
    }
    return timings, retried_ok


async def run_exchange(
    api: Api, token_for: TokenFor, plan: Plan, report: Report, rng: random.Random
) -> None:
    """Run a Secret-Santa exchange among the elves; every elf opens their own match."""
    year = datetime.now().year
    exchange = await api.call(
        "POST",
        "/api/v1/exchanges",
        {"name": "Workshop Secret Santa", "year": year, "region": "north-pole"},
    )
    report.exchange_id = exchange_id = exchange["id"]
    keys = {}
    people = []
    for n in range(plan.elves):
        pid = f"elf-{n:03d}-{rng.getrandbits(32):08x}"
        keys[pid] = new_private_key()
        people.append(
            {
                "id": pid,
                "region": "north-pole",
                "budget": 20,
                "group": f"household-{n % plan.households}",
                "public_key": public_key_b64(keys[pid]),
            }
        )
    await api.call(
        "POST", f"/api/v1/exchanges/{exchange_id}/participants", {"participants": people}
    )
    started = time.perf_counter()
    committed = await api.call("POST", f"/api/v1/exchanges/{exchange_id}/match")
    report.match_s = time.perf_counter() - started
    report.exchange_phase = committed["phase"]
    report.participants = len(people)
    for pid, key in keys.items():
        elf = api.as_(token_for(pid, Role.PARTICIPANT))
        try:
            sealed = await elf.call("GET", f"/api/v1/exchanges/{exchange_id}/matches/{pid}")
        finally:
            await elf.close()
        revealed = open_match(sealed["sealed"], key)
        report.opened += 1
        report.commitments_ok += verify_commitment(revealed, sealed["commitment"])


async def run_season(api: Api, plan: Plan, token_for: TokenFor, progress: Progress) -> Report:
    """Run every step of the season and return the report."""
    rng = random.Random()  # noqa: S311 - demo data, not secrets
    report = Report()
    await api.wait_ready()
    clock = time.perf_counter()
    gift_ids = await register_gifts(api, plan, progress, rng)
    report.gifts, report.register_s = len(gift_ids), time.perf_counter() - clock
    clock = time.perf_counter()
    by_gift, flaky = await submit_tasks(api, gift_ids, plan, progress, rng)
    report.tasks = sum(len(t) for t in by_gift.values())
    report.submit_s, report.flaky = time.perf_counter() - clock, len(flaky)
    clock = time.perf_counter()
    report.by_status = await drain(
        api, token_for("demo-elves", Role.WORKER), plan, len(gift_ids), progress
    )
    report.drain_s = time.perf_counter() - clock
    report.timings_ms, report.retried_ok = await read_timings(api, by_gift, flaky, rng)
    await run_exchange(api, token_for, plan, report, rng)
    return report


def new_progress() -> Progress:
    """The progress display of the demo (on stderr)."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.completed:>7,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
