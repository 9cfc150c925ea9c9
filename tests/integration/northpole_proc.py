"""Start, drive and stop real ``northpole`` processes for integration and fault tests.

The ``procs`` fixture hands a test a :class:`NorthpoleFactory` rooted in the
test's own ``tmp_path``. Everything it starts runs on a free loopback port in a
data directory of its own (unless the test shares one on purpose), writes its
stdout and stderr to files next to that directory, and is killed when the test
ends, whatever happened. Every wait is bounded by a deadline.

The conftest files of ``tests/integration`` and ``tests/fault`` import the
fixture and the report hook from here; test modules import the helpers.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ports import free_port

#: How long a server may take from spawn to answering ``/readyz``.
READY_TIMEOUT_S = 30.0
#: How long a process may take to exit once asked to (or once expected to fail).
EXIT_TIMEOUT_S = 15.0
#: How long a one-shot CLI command may run.
CLI_TIMEOUT_S = 60.0
POLL_S = 0.05
GENERATE_PATH = "/api/v1/gift-id/generate"
HEALTH_PATH = "/api/v1/gift-id/health"
_PORT_TAKEN = "address already in use"


def northpole_command() -> list[str]:
    """Return the argv prefix that runs the CLI of the interpreter running the tests."""
    script = Path(sys.executable).with_name("northpole")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "northpole"]


def now_ms() -> int:
    """Return the wall clock in Unix milliseconds, as the servers read it."""
    return time.time_ns() // 1_000_000


def squash(text: str) -> str:
    """Drop all whitespace, so matches survive rich wrapping messages at the terminal width."""
    return "".join(text.split())


def id_lines(text: str) -> list[int]:
    """Return the decimal lines of ``text`` as ints (``northpole id new`` output)."""
    return [int(line) for line in text.splitlines() if line.strip().isdigit()]


def metric_value(text: str, name: str) -> float:
    """Return the value of the unlabelled sample ``name`` in Prometheus text format."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if match is None:
        raise AssertionError(f"metric {name} not found in:\n{text}")
    return float(match.group(1))


def watermark_path(data_dir: Path, workshop_id: int) -> Path:
    """Return where the server keeps the high-water mark of ``workshop_id``."""
    return data_dir / "idgen" / f"workshop-{workshop_id}.watermark"


def lock_path(data_dir: Path, workshop_id: int) -> Path:
    """Return the lock file of ``workshop_id``."""
    return data_dir / "idgen" / f"workshop-{workshop_id}.lock"


def read_watermark(data_dir: Path, workshop_id: int) -> int:
    """Return the stored high-water mark in Unix ms."""
    return int(watermark_path(data_dir, workshop_id).read_text(encoding="ascii").strip())


def write_watermark(data_dir: Path, workshop_id: int, value: int | str) -> Path:
    """Overwrite the high-water mark file of ``workshop_id`` with ``value``."""
    path = watermark_path(data_dir, workshop_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n", encoding="ascii")
    return path


def lock_is_free(data_dir: Path, workshop_id: int) -> bool:
    """Return whether no process holds the workshop id's flock right now."""
    fd = os.open(lock_path(data_dir, workshop_id), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def generate(client: httpx.Client, count: int | None = None) -> list[int]:
    """POST to the generate route and return the IDs; fail loudly on anything but 200."""
    response = client.post(GENERATE_PATH, json={"count": count} if count is not None else None)
    if response.status_code != 200:
        raise AssertionError(f"generate answered {response.status_code}: {response.text}")
    ids = response.json()["ids"]
    if not all(isinstance(x, str) and x.isdigit() and str(int(x)) == x for x in ids):
        raise AssertionError(f"IDs must be canonical decimal strings: {ids[:5]}...")
    return [int(x) for x in ids]


class NorthpoleProcess:
    """One running (or finished) ``northpole`` process and its captured output.

    Args:
        args: The CLI arguments after ``northpole``.
        data_dir: The value of ``NORTHPOLE_DATA_DIR``.
        env: The whole environment of the child.
        log_dir: Where ``<name>.stdout`` and ``<name>.stderr`` go.
        name: A unique name within the test.
        port: Appended as ``--host 127.0.0.1 --port P`` for servers; ``None`` for one-shots.
        token: A bearer token valid for this data directory, if one was made.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        data_dir: Path,
        env: Mapping[str, str],
        log_dir: Path,
        name: str,
        port: int | None = None,
        token: str | None = None,
    ) -> None:
        self.args = list(args)
        self.data_dir = data_dir
        self.env = dict(env)
        self.name = name
        self.port = port
        self.token = token
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        #: Unix ms at which the server first answered any HTTP request.
        self.first_response_ms: int | None = None
        self.popen = self._spawn()

    # -- lifecycle --------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [*northpole_command(), *self.args]
        if self.port is not None:
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env
            )

    def _respawn_if_port_taken(self) -> bool:
        """After an early exit, try again on a new port if the old one was taken meanwhile."""
        if self.port is None or _PORT_TAKEN not in self.output().lower():
            return False
        self.stdout_path.write_bytes(b"")
        self.stderr_path.write_bytes(b"")
        self.port = free_port()
        self.popen = self._spawn()
        return True

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise AssertionError(f"{self.name} is not a server")
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        """The exit status, ``None`` while running (negative: killed by that signal)."""
        return self.popen.poll()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def wait_listening(self, timeout: float = READY_TIMEOUT_S) -> int | None:
        """Poll ``/readyz`` until the server answers at all.

        Returns:
            The status of the first answer (200 ready, 503 not ready), or ``None``
            if the process exited first.

        Raises:
            AssertionError: Neither happened before the deadline.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                if self.popen.poll() is not None:
                    if self._respawn_if_port_taken():
                        continue
                    return None
                try:
                    status = client.get(f"{self.base_url}/readyz").status_code
                except httpx.TransportError:
                    pass
                else:
                    if self.first_response_ms is None:
                        self.first_response_ms = now_ms()
                    return status
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not answer in {timeout} s\n{self}")
                time.sleep(POLL_S)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until ``/readyz`` answers 200.

        Raises:
            AssertionError: The process exited, or was not ready by the deadline.
        """
        deadline = time.monotonic() + timeout
        status = self.wait_listening(timeout)
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while status != 200:
                if status is None:
                    raise AssertionError(f"{self.name} exited before it was ready\n{self}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not ready after {timeout} s\n{self}")
                time.sleep(POLL_S)
                try:
                    status = client.get(f"{self.base_url}/readyz").status_code
                except httpx.TransportError:
                    status = None if self.popen.poll() is not None else 0

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to end and return its exit status.

        Raises:
            AssertionError: Still running at the deadline (the fixture kills it later).
        """
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s\n{self}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Send ``sig`` (if still running) and return the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> int:
        """``kill -9`` the process and return its exit status."""
        return self.stop(signal.SIGKILL)

    # -- output -----------------------------------------------------------

    def stdout(self) -> str:
        """Everything written to stdout so far."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        """stdout then stderr."""
        return self.stdout() + self.stderr()

    def log_records(self) -> list[dict[str, Any]]:
        """Parse stdout as JSON lines.

        Raises:
            AssertionError: A non-empty stdout line is not a JSON object.
        """
        records: list[dict[str, Any]] = []
        for line in self.stdout().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"{self.name}: stdout line is not JSON: {line!r}") from None
            if not isinstance(record, dict):
                raise AssertionError(f"{self.name}: stdout line is not an object: {line!r}")
            records.append(record)
        return records

    def log_messages(self) -> list[str]:
        """The ``message`` of every JSON log line."""
        return [str(record.get("message", "")) for record in self.log_records()]

    # -- HTTP -------------------------------------------------------------

    def client(self, *, timeout: float = 30.0) -> httpx.Client:
        """Return an HTTP client for this server, with its bearer token if it has one."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, trust_env=False
        )

    def generate(self, count: int | None = None) -> list[int]:
        """Ask for ``count`` IDs (no body when ``None``) and return them."""
        with self.client() as client:
            return generate(client, count)

    def __str__(self) -> str:
        return (
            f"--- {self.name} pid={self.pid} rc={self.returncode} "
            f"args={' '.join(self.args)} port={self.port} data_dir={self.data_dir}\n"
            f"--- stdout:\n{self.stdout()[-6000:]}\n--- stderr:\n{self.stderr()[-3000:]}"
        )


class NorthpoleFactory:
    """Starts ``northpole`` processes for one test and kills what is left at its end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[NorthpoleProcess] = []
        self._tokens: dict[Path, str] = {}
        self._names: dict[str, int] = {}

    def data_dir(self, name: str = "data") -> Path:
        """Return (creating it) a data directory under the test's tmp dir."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child environment: ours minus any ``NORTHPOLE_*``, plus the data directory."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NORTHPOLE_")}
        env.update(NORTHPOLE_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", COLUMNS="400")
        env.update(extra or {})
        return env

    def _unique(self, name: str) -> str:
        self._names[name] = self._names.get(name, 0) + 1
        count = self._names[name]
        return name if count == 1 else f"{name}-{count}"

    def cli(
        self,
        *args: str,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        timeout: float = CLI_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command to completion and capture its output."""
        return subprocess.run(
            [*northpole_command(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(data_dir, env),
            timeout=timeout,
            check=False,
        )

    def token(self, data_dir: Path) -> str:
        """Return an operator token for ``data_dir``, made once with ``northpole token create``.

        Making it before any server starts also creates the data directory's signing
        key, so servers started side by side never race to create it.
        """
        if data_dir not in self._tokens:
            result = self.cli(
                "token", "create", "--role", "operator", "--sub", "tests", data_dir=data_dir
            )
            token = result.stdout.strip()
            if result.returncode != 0 or token.count(".") != 2:
                raise AssertionError(f"token create failed: {result!r}")
            self._tokens[data_dir] = token
        return self._tokens[data_dir]

    def spawn(
        self,
        *args: str,
        data_dir: Path,
        name: str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> NorthpoleProcess:
        """Start ``northpole <args>`` in the background and track it."""
        process = NorthpoleProcess(
            args,
            data_dir=data_dir,
            env=self.env(data_dir, env),
            log_dir=self.log_dir,
            name=self._unique(name),
            port=port,
            token=token,
        )
        self.processes.append(process)
        return process

    def serve(
        self,
        workshop_id: int,
        *,
        data_dir: Path | None = None,
        wait: bool = True,
        with_token: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> NorthpoleProcess:
        """Start ``northpole idgen serve`` for ``workshop_id`` on a free port.

        Args:
            workshop_id: The workshop id to serve.
            data_dir: Shared data directory (default: ``<tmp>/data``).
            wait: Wait until ``/readyz`` answers 200 before returning.
            with_token: Make an operator token for the data directory first.
            env: Extra environment, e.g. ``NORTHPOLE_IDGEN__RESERVE_MS``.
        """
        data = data_dir or self.data_dir()
        process = self.spawn(
            "idgen",
            "serve",
            "--workshop-id",
            str(workshop_id),
            data_dir=data,
            name=f"idgen-{workshop_id}",
            port=free_port(),
            env=env,
            token=self.token(data) if with_token else None,
        )
        if wait:
            process.wait_ready()
        return process

    def up(self, *, data_dir: Path | None = None, wait: bool = True) -> NorthpoleProcess:
        """Start ``northpole up`` (every part) on a free port."""
        data = data_dir or self.data_dir()
        process = self.spawn(
            "up", data_dir=data, name="up", port=free_port(), token=self.token(data)
        )
        if wait:
            process.wait_ready()
        return process

    def cleanup(self) -> None:
        """Kill every process still running and reap them all."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
        for process in self.processes:
            try:
                process.popen.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel
                pass

    def report(self) -> str:
        """Every process with its output, for a failed test's report."""
        return "\n".join(str(process) for process in self.processes)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NorthpoleFactory]:
    """A :class:`NorthpoleFactory` in this test's tmp dir; kills its processes afterwards."""
    factory = NorthpoleFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()
        report = getattr(request.node, "northpole_call_report", None)
        if report is not None and report.failed and factory.processes:
            request.node.add_report_section("teardown", "northpole processes", factory.report())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember the call-phase report so ``procs`` can attach process output on failure."""
    report = yield
    if call.when == "call":
        item.northpole_call_report = report  # type: ignore[attr-defined]
    return report
