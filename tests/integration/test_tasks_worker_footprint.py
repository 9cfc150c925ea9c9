"""A ``northpole worker`` on a real Redis queue imports the task queue, not the whole product.

The unit tests (``tests/unit/cli/test_lazy_imports.py``) cover a worker over
HTTP and on the local SQLite queue; this one opens the cluster edition's
Redis store in the worker process itself, as the queue benchmarks do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from redis_servers import start_redis
from worker_imports import HEAVY, modules_of_worker

pytestmark = pytest.mark.integration


def test_a_worker_on_redis_imports_none_of_the_heavy_modules(tmp_path: Path) -> None:
    """The Redis store brings the redis client and nothing of the servers or the matcher."""
    redis = start_redis(tmp_path / "redis")
    try:
        env = {"NORTHPOLE_TASKS__REDIS_URL": redis.url}
        imported = modules_of_worker(tmp_path / "worker", "--concurrency", "50", env=env)
    finally:
        redis.stop()
    assert "redis" in imported
    assert sorted(imported & HEAVY) == []
