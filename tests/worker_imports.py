"""What a real ``northpole worker`` process imports, for the tests that keep workers light.

The worker serves a handler module written to the test's tmp dir; when the
process exits, that module writes ``sys.modules`` to a file. A test therefore
sees everything the worker imported while it started, ran, drained and stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

#: Top-level packages a worker must not import: the web server, the exchange matcher
#: and its crypto, the registry's databases, coordination and the event stream.
HEAVY = frozenset(
    {
        "scipy",
        "numpy",
        "sqlalchemy",
        "alembic",
        "asyncpg",
        "fastapi",
        "starlette",
        "uvicorn",
        "nacl",
        "lap",
        "aetcd",
        "grpc",
        "nats",
    }
)

HANDLERS = """
import atexit
import json
import os
import sys

from northpole.tasks.handlers import TaskRegistry

registry = TaskRegistry()


@registry.handler("wrap")
async def wrap(ctx):
    return None


@atexit.register
def _write_modules():
    with open(os.environ["ELF_MODULES_OUT"], "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)
"""

BANNER = "northpole worker"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def modules_of_worker(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> frozenset[str]:
    """Run ``northpole worker ARGS`` until its banner, stop it with SIGTERM, and
    return the top-level packages it had imported by then.

    The data directory is ``tmp_path / "data"``; ``env`` adds NORTHPOLE_* settings.
    """
    modules = tmp_path / "modules"
    modules.mkdir(parents=True)
    (modules / "elf_footprint.py").write_text(HANDLERS, encoding="utf-8")
    written = tmp_path / "sys_modules.json"
    stderr = tmp_path / "worker.stderr"
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH")])),
        "NORTHPOLE_DATA_DIR": str(tmp_path / "data"),
        "ELF_MODULES_OUT": str(written),
        **(env or {}),
    }
    argv = [sys.executable, "-m", "northpole", "worker", "elf_footprint:registry", *args]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while BANNER not in stderr.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{stderr.read_text()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return frozenset(name.partition(".")[0] for name in json.loads(written.read_text()))
