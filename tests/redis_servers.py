"""Throwaway ``redis-server`` processes on free loopback ports, and their pytest fixtures.

* :func:`start_redis`: one server (optionally a replica of another).
* :func:`start_cluster`: masters with cluster mode on, joined by
  ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.
* :func:`start_sentinels`: Sentinels watching a primary.

Every process runs in a directory under the test's tmp dir, logs to a file
there, persists nothing unless asked, and is killed when its fixture ends.
Every wait is bounded. The fixtures (``redis_server``, ``redis_cluster``) are
session-scoped: tests share the servers and keep apart by key namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_TIMEOUT_S = 20.0
_namespaces = itertools.count(1)


def free_port(*, below: int = 65536) -> int:
    """Return a loopback port below ``below`` that nobody listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < below and (below == 65536 or _bindable(port + 10_000)):
            return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def unique_namespace(prefix: str = "t") -> str:
    """Return a key namespace no other test of this process uses."""
    return f"{prefix}{next(_namespaces)}-{time.monotonic_ns() % 10**9}"


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """Run ``redis-cli -p port args`` and return its output (raising on failure)."""
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


@dataclass
class RedisProcess:
    """One running ``redis-server`` (or Sentinel)."""

    port: int
    directory: Path
    popen: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log(self) -> str:
        """The server's log so far."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """``kill -9`` the server and reap it."""
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a bound)."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _spawn(
    directory: Path, args: Sequence[str], *, sentinel: bool = False, port: int | None = None
) -> RedisProcess:
    """Start a server with ``args`` on a free port; retry if the port was taken meanwhile.

    A cluster node also listens on its port + 10000 (the cluster bus), so its port
    stays below 55536 with that one free too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fixed = port
    for _ in range(5):
        port = fixed or free_port(below=55_536 if "--cluster-enabled" in args else 65_536)
        argv = [REDIS_SERVER]
        if sentinel:
            conf = directory / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\n", encoding="ascii")
            argv += [str(conf), "--sentinel"]
        argv += [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        if not sentinel:
            argv += ["--save", "", "--appendonly", "no"]
        argv += list(args)
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = RedisProcess(port, directory, popen, list(args))
        if _wait_ping(server):
            return server
        server.kill()
        if fixed is not None or "Address already in use" not in server.log():
            raise RuntimeError(f"redis-server did not start: {server.log()[-2000:]}")
    raise RuntimeError("no free port for redis-server after 5 tries")


def _wait_ping(server: RedisProcess) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def start_redis(directory: Path, *args: str) -> RedisProcess:
    """Start one ``redis-server`` with extra ``args`` (e.g. ``--appendonly yes``)."""
    return _spawn(directory, args)


def restart(server: RedisProcess) -> RedisProcess:
    """Start ``server`` again (after a stop or a kill) on its port, directory and arguments."""
    return _spawn(server.directory, server.args, port=server.port)


def start_replica(directory: Path, primary: RedisProcess, *args: str) -> RedisProcess:
    """Start a replica of ``primary`` and wait until its link is up."""
    replica = _spawn(directory, ["--replicaof", "127.0.0.1", str(primary.port), *args])
    deadline = time.monotonic() + START_TIMEOUT_S
    while "master_link_status:up" not in cli(replica.port, "INFO", "replication"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"replica did not sync: {replica.log()[-2000:]}")
        time.sleep(0.05)
    return replica


def start_sentinels(
    directory: Path, primary: RedisProcess, service: str, count: int = 3, quorum: int = 2
) -> list[RedisProcess]:
    """Start ``count`` Sentinels watching ``primary`` as ``service`` (fast failover timings)."""
    sentinels = []
    for i in range(count):
        sentinel = _spawn(directory / f"sentinel-{i}", [], sentinel=True)
        for command in (
            ["SENTINEL", "MONITOR", service, "127.0.0.1", str(primary.port), str(quorum)],
            ["SENTINEL", "SET", service, "down-after-milliseconds", "1000"],
            ["SENTINEL", "SET", service, "failover-timeout", "3000"],
            ["SENTINEL", "SET", service, "parallel-syncs", "1"],
        ):
            cli(sentinel.port, *command)
        sentinels.append(sentinel)
    return sentinels


@dataclass
class RedisCluster:
    """A running Redis Cluster of masters (no replicas)."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>,...`` (the form the task store connects to)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def start_cluster(directory: Path, masters: int = 3) -> RedisCluster:
    """Start ``masters`` cluster-enabled servers and create the cluster over them."""
    nodes = [
        _spawn(
            directory / f"node-{i}",
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ],
        )
        for i in range(masters)
    ]
    cluster = RedisCluster(nodes)
    try:
        cli(
            nodes[0].port,
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            timeout=60,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all("cluster_state:ok" in cli(n.port, "CLUSTER", "INFO") for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach state ok")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One throwaway redis-server for the session (tests use their own namespaces)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One throwaway 3-master Redis Cluster for the session."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()
