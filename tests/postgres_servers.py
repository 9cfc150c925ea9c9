"""Throwaway PostgreSQL 15 servers on free loopback ports, and their pytest fixtures.

* :func:`start_postgres`: ``initdb`` a new cluster in a fresh directory and run
  ``postgres`` on it, listening on 127.0.0.1 only (never the machine's 5432),
  with its unix socket in that directory.
* ``postgres_server`` (session-scoped, so one per xdist worker) and
  ``postgres_url`` (a fresh database per test, dropped after it).

PostgreSQL refuses to run as root, so the binaries run as the ``postgres``
user (``subprocess.Popen(user=...)``) in a directory under ``/tmp`` chowned
to it (pytest's own tmp dirs are private to root). Authentication is
``trust`` on loopback. The session server runs with ``fsync=off``: contract
and unit tests do not test durability; tests that do (kill -9) start their
own server with ``fsync=True``. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ports import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
START_TIMEOUT_S = 30.0
_databases = itertools.count(1)


def available() -> bool:
    """Whether the PostgreSQL binaries and the ``postgres`` user are here."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return (BIN / "postgres").exists() and (BIN / "initdb").exists()


def _as_postgres(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, user=USER, group=USER, extra_groups=[], capture_output=True, text=True, **kwargs
    )


@dataclass
class PostgresProcess:
    """One running ``postgres`` server."""

    port: int
    directory: Path
    popen: subprocess.Popen[bytes]
    fsync: bool = False

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log(self) -> str:
        """The server's log so far."""
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one statement with ``psql`` and return its unaligned output."""
        done = subprocess.run(
            [str(BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", self.url(database)],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def create_database(self) -> str:
        """Create an empty database and return its name."""
        name = f"t{os.getpid()}_{next(_databases)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def kill(self) -> None:
        """``kill -9`` the postmaster and reap it (its children exit on their own)."""
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL after a bound."""
        if self.alive():
            self.popen.send_signal(2)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Start the server again on the same port and data directory."""
        self.popen = _run(self.directory, self.port, fsync=self.fsync)
        if not _wait_ready(self):
            raise RuntimeError(f"postgres did not restart: {self.log()[-2000:]}")


def _run(directory: Path, port: int, *, fsync: bool) -> subprocess.Popen[bytes]:
    log = open(directory / "postgres.log", "ab")
    try:
        return subprocess.Popen(
            [
                str(BIN / "postgres"),
                "-D",
                str(directory / "data"),
                "-p",
                str(port),
                "-k",
                str(directory),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"fsync={'on' if fsync else 'off'}",
                "-c",
                f"full_page_writes={'on' if fsync else 'off'}",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ],
            user=USER,
            group=USER,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()


def _wait_ready(server: PostgresProcess) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        done = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(server.port)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0:
            return True
        time.sleep(0.1)
    return False


def start_postgres(*, fsync: bool = False) -> PostgresProcess:
    """``initdb`` a cluster in a new directory under /tmp and start ``postgres`` on it.

    Args:
        fsync: Keep PostgreSQL's durability (``fsync``, ``full_page_writes``);
            off makes tests faster and is only for tests that do not kill it.
    """
    directory = Path(tempfile.mkdtemp(prefix="northpole-pg-"))
    entry = pwd.getpwnam(USER)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    done = _as_postgres(
        [
            str(BIN / "initdb"),
            "-D",
            str(directory / "data"),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
    for _ in range(5):
        port = free_port()
        server = PostgresProcess(port, directory, _run(directory, port, fsync=fsync), fsync)
        if _wait_ready(server):
            return server
        server.kill()
        if "could not bind" not in server.log() and "in use" not in server.log():
            log = server.log()
            shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(f"postgres did not start: {log[-2000:]}")
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError("no free port for postgres after 5 tries")


def remove(server: PostgresProcess) -> None:
    """Stop the server and delete its directory."""
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresProcess]:
    """One throwaway PostgreSQL server for the session (``fsync=off``)."""
    if not available():
        pytest.fail(f"PostgreSQL 15 is not installed in {BIN} (or no '{USER}' user)")
    server = start_postgres()
    yield server
    remove(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresProcess) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server (dropped afterwards)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
