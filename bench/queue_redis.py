"""Benchmark of the Redis task store against one throwaway ``redis-server``.

Cases (one JSON line each on stdout):

* ``redis_submit_batch``: tasks stored per second by one process submitting
  batches of ``--batch`` tasks (no dependencies, no idempotency keys).
* ``redis_lifecycle_w1`` / ``redis_lifecycle_w2``: tasks per second taken from
  submitted to COMPLETED by 1 and 2 worker processes, each claiming
  ``--claim`` tasks at a time and completing them together (coalesced into one
  script call per partition); with each worker's RSS at the end.

The store is used directly (no HTTP), so the figures are those of the store
and Redis. Run: ``.venv/bin/python bench/queue_redis.py [--tasks N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's ``queue`` (which redis imports):
# keep this directory last on the path.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in ("", _HERE)] + [_HERE]

from _common import console, emit, free_port, rss_mb, stop_process  # noqa: E402
from northpole.tasks.model import Task, TaskState  # noqa: E402
from northpole.tasks.redis_store import RedisTaskStore  # noqa: E402
from northpole.tasks.retry import RetryPolicy  # noqa: E402
from northpole.tasks.scheduler import partition_of  # noqa: E402
from northpole.tasks.store import Claim  # noqa: E402

PARTITIONS = 16
TARGETS = {"redis_submit_batch": 100_000, "redis_lifecycle_w2": 20_000}


def store_on(url: str, namespace: str) -> RedisTaskStore:
    """A store with the default queue settings."""
    return RedisTaskStore(
        url, partitions=PARTITIONS, aging_ms=1_000, policy=RetryPolicy(), namespace=namespace
    )


def tasks(ids: range, now: int) -> list[Task]:
    """PENDING tasks with the given ids (gift id = task id)."""
    return [
        Task(
            id=i,
            gift_id=i,
            task_type="wrap",
            priority=i % 3,
            dependencies=(),
            max_retries=3,
            deadline_ms=None,
            metadata={"to": "elf"},
            idempotency_key=None,
            partition=partition_of(i, PARTITIONS),
            state=TaskState.PENDING,
            created_ms=now,
            updated_ms=now,
            available_ms=now,
        )
        for i in ids
    ]


def now_ms() -> int:
    """Wall-clock Unix ms."""
    return time.time_ns() // 1_000_000


async def submit_all(url: str, namespace: str, total: int, batch: int, start: int) -> float:
    """Submit ``total`` tasks in batches; return the seconds it took."""
    async with store_on(url, namespace) as store:
        began = time.perf_counter()
        for first in range(start, start + total, batch):
            await store.submit(tasks(range(first, first + batch), now_ms()), now_ms=now_ms())
        return time.perf_counter() - began


async def work(url: str, namespace: str, worker: str, claim: int) -> tuple[int, float, float]:
    """Claim and complete until a claim comes back empty twice.

    Returns:
        Tasks completed, and the wall-clock times of the first claim and the last completion.
    """
    done = 0
    empty = 0
    first = last = time.time()
    async with store_on(url, namespace) as store:
        first = time.time()
        while empty < 2:
            got, _ = await store.claim(
                Claim(worker, "bench", limit=claim, lease_ms=60_000), now_ms=now_ms()
            )
            if not got:
                empty += 1
                await asyncio.sleep(0.05)
                continue
            empty = 0
            now = now_ms()
            await asyncio.gather(
                *(
                    store.complete(t.id, worker_id=worker, fence=t.fence, result=None, now_ms=now)
                    for t in got
                )
            )
            done += len(got)
            last = time.time()
    return done, first, last


def lifecycle(url: str, args: argparse.Namespace, workers: int, start: int) -> None:
    """Submit ``args.tasks`` tasks, then time ``workers`` processes draining them."""
    namespace = f"bench-w{workers}"
    asyncio.run(submit_all(url, namespace, args.tasks, args.batch, start))
    cmd = [sys.executable, __file__, "--worker", url, namespace, str(args.claim)]
    procs = [
        subprocess.Popen([*cmd, f"w{i}"], stdout=subprocess.PIPE, text=True) for i in range(workers)
    ]
    rss: list[float] = []
    counts: list[int] = []
    spans: list[tuple[float, float]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        done, memory, first, last = out.split()
        counts.append(int(done))
        rss.append(float(memory))
        spans.append((float(first), float(last)))
    # From the first claim of any worker to the last completion (process start-up excluded).
    seconds = max(last for _, last in spans) - min(first for first, _ in spans)
    case = f"redis_lifecycle_w{workers}"
    rate = sum(counts) / seconds
    emit(
        {
            "case": case,
            "n": sum(counts),
            "seconds": round(seconds, 3),
            "per_s": round(rate),
            "target_per_s": TARGETS.get(case),
            "worker_rss_mb": rss,
            "claim": args.claim,
        }
    )
    console.print(f"{case}: {rate:,.0f} tasks/s ({counts})")


def main() -> None:
    """Run the cases against a throwaway redis-server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--claim", type=int, default=200)
    parser.add_argument("--worker", nargs=4, metavar=("URL", "NS", "CLAIM", "ID"))
    args = parser.parse_args()
    if args.worker:
        url, namespace, claim, worker = args.worker
        done, first, last = asyncio.run(work(url, namespace, worker, int(claim)))
        print(done, rss_mb(), first, last)
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", tmp, "--logfile", str(Path(tmp) / "log")),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "PING"], capture_output=True, check=False
                ).stdout.strip()
                != b"PONG"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            ids = itertools.count(1, args.tasks)
            seconds = asyncio.run(submit_all(url, "bench-submit", args.tasks, args.batch, 1))
            rate = args.tasks / seconds
            emit(
                {
                    "case": "redis_submit_batch",
                    "n": args.tasks,
                    "seconds": round(seconds, 3),
                    "per_s": round(rate),
                    "target_per_s": TARGETS["redis_submit_batch"],
                    "batch": args.batch,
                }
            )
            console.print(f"redis_submit_batch: {rate:,.0f} tasks/s")
            next(ids)
            for workers in (1, 2):
                lifecycle(url, args, workers, next(ids) * 10)
        finally:
            stop_process(server)


if __name__ == "__main__":
    main()
