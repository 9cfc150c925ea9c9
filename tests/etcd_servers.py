"""Throwaway etcd servers for tests: one member, or a three-member cluster.

Each member runs the Debian ``etcd`` binary on free loopback ports (client and
peer) in a data directory under the test's ``tmp_path``, with short heartbeat
and election timeouts so elections and lease expiries are quick. Every wait is
bounded; every member is killed when the fixture ends.

Test modules import the fixtures from here (``tests`` is put on ``sys.path``
by the ``conftest.py`` of ``tests/integration/coord`` and by the fault tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ports import free_port

ETCD = shutil.which("etcd")
#: Heartbeat and election timeout of test clusters, in ms. etcd's shortest lease
#: TTL is 1.5 election timeouts rounded up to whole seconds: 1 s here.
HEARTBEAT_MS = 50
ELECTION_MS = 500
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

needs_etcd = pytest.mark.skipif(ETCD is None, reason="the etcd binary is not installed")


@dataclass(slots=True)
class EtcdMember:
    """One etcd process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        """The member's client URL."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The member's peer URL."""
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        """Spawn the member (it joins ``initial_cluster``)."""
        assert ETCD is not None
        argv = [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=northpole-test",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--log-level=warn",
            "--logger=zap",
        ]
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        log.close()

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the member at once (``SIGKILL``) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the member (``SIGTERM``, then ``SIGKILL`` if it lingers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def healthy(self) -> bool:
        """Whether ``/health`` answers that the member is healthy (it has a leader)."""
        try:
            response = httpx.get(f"{self.client_url}/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def is_leader(self) -> bool:
        """Whether this member is the raft leader (from its ``/metrics``)."""
        try:
            text = httpx.get(f"{self.client_url}/metrics", timeout=1.0).text
        except httpx.HTTPError:
            return False
        return "etcd_server_is_leader 1" in text


@dataclass(slots=True)
class EtcdCluster:
    """A set of members started together; ``endpoints`` lists their client URLs."""

    members: list[EtcdMember] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, size: int) -> EtcdCluster:
        """Lay out ``size`` members under ``root`` (not started yet)."""
        members = []
        for index in range(size):
            name = f"m{index}"
            member_dir = root / name
            member_dir.mkdir(parents=True)
            members.append(
                EtcdMember(
                    name=name,
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=member_dir / "data",
                    log_path=member_dir / "etcd.log",
                )
            )
        return cls(members)

    @property
    def initial_cluster(self) -> str:
        """The ``--initial-cluster`` value."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL."""
        return [m.client_url for m in self.members]

    def start(self) -> None:
        """Start every member and wait until each reports healthy.

        Raises:
            RuntimeError: A member exited or did not become healthy in time (with its log).
        """
        for member in self.members:
            member.start(self.initial_cluster)
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(self.members)
        while pending:
            pending = [m for m in pending if not m.healthy()]
            for member in pending:
                if not member.alive() or time.monotonic() > deadline:
                    log = member.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"etcd member {member.name} did not start:\n{log}")
            if pending:
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop every member."""
        for member in self.members:
            with contextlib.suppress(Exception):
                member.kill()

    def leader(self, timeout_s: float = 10.0) -> EtcdMember:
        """Return the member that leads now, waiting for an election if there is none."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for member in self.members:
                if member.alive() and member.is_leader():
                    return member
            time.sleep(0.05)
        raise RuntimeError("the etcd cluster has no leader")


@contextlib.contextmanager
def running_cluster(root: Path, size: int) -> Iterator[EtcdCluster]:
    """Start a cluster of ``size`` members under ``root``, and stop it on exit."""
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    cluster = EtcdCluster.create(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A single-member etcd on free loopback ports, stopped after the test."""
    with running_cluster(tmp_path / "etcd", 1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster on free loopback ports, stopped after the test."""
    with running_cluster(tmp_path / "etcd3", 3) as cluster:
        yield cluster
