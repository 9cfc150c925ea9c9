"""Run three ``northpole matcher serve`` replicas on a throwaway etcd, and talk to them.

Each replica is a real process on a free loopback port with a data directory
and a log file of its own; all share one auth secret, so tokens made here are
valid on every replica. Every wait is bounded; :meth:`ReplicaCluster.kill_all`
kills whatever is left.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from nacl.public import PrivateKey, SealedBox
from pydantic import SecretStr

from northpole.core.auth import Role, TokenService
from northpole.core.settings import AuthSettings
from northpole.exchange.crypto import commitment_root, new_private_key, public_key_b64

SECRET = "replica-test-secret-0123456789abcdef0123456789"
READY_TIMEOUT_S = 30.0
POLL_S = 0.05
_SPAWN = "from northpole.cli.matcher_commands import app; app(prog_name='northpole matcher')"


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tokens() -> TokenService:
    """A token service with the replicas' secret."""
    return TokenService(SECRET.encode(), AuthSettings(secret=SecretStr(SECRET)))


@dataclass
class Replica:
    """One replica process."""

    number: int
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the process."""
        log = self.log_path.open("ab")
        argv = [sys.executable, "-c", _SPAWN, "serve", "--replica", str(self.number)]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)
        log.close()

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9`` the process and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        """Its log so far."""
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        try:
            return httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def leads(self) -> bool:
        """Whether its metrics say it leads the matcher election."""
        try:
            text = httpx.get(self.url + "/metrics", timeout=1.0).text
        except httpx.HTTPError:
            return False
        return (
            re.search(r'^consensus_is_leader\{election="matcher"\} 1\.0$', text, re.M) is not None
        )


@dataclass
class ReplicaCluster:
    """Three replicas on one etcd."""

    root: Path
    endpoints: list[str]
    replicas: list[Replica] = field(default_factory=list)

    def make(self, number: int, extra_env: Mapping[str, str] | None = None) -> Replica:
        """Lay out replica ``number`` (not started)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("NORTHPOLE_")}
        port = free_port()
        data_dir = self.root / f"replica-{number}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **base,
            "NORTHPOLE_COORD__ENDPOINTS": json.dumps(self.endpoints),
            "NORTHPOLE_COORD__ELECTION_TTL_S": "1",
            "NORTHPOLE_AUTH__SECRET": SECRET,
            "NORTHPOLE_DATA_DIR": str(data_dir),
            "NORTHPOLE_HTTP__PORT": str(port),
            "NORTHPOLE_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        replica = Replica(number, port, data_dir, self.root / f"replica-{number}.log", env)
        self.replicas.append(replica)
        return replica

    def start(self, replica: Replica) -> Replica:
        """Start ``replica`` and wait until it is ready."""
        replica.start()
        wait_for(replica.ready, f"replica {replica.number} ready", replica=replica)
        return replica

    def alive(self) -> list[Replica]:
        """The replicas still running."""
        return [r for r in self.replicas if r.alive()]

    def leader(self, timeout_s: float = 15.0) -> Replica:
        """Return the replica that leads (waiting for one)."""
        found: list[Replica] = []

        def one() -> bool:
            found[:] = [r for r in self.alive() if r.leads()]
            return len(found) == 1

        wait_for(one, "one matcher leader", timeout_s=timeout_s)
        return found[0]

    def kill_all(self) -> None:
        """Kill every replica still running."""
        for replica in self.replicas:
            replica.kill()


def wait_for(
    check: Any, what: str, *, timeout_s: float = READY_TIMEOUT_S, replica: Replica | None = None
) -> None:
    """Poll ``check()`` until true, or fail after ``timeout_s`` (with the replica's log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if replica is not None and not replica.alive():
            raise AssertionError(f"{what}: replica exited\n{replica.log()[-3000:]}")
        time.sleep(POLL_S)
    tail = "" if replica is None else replica.log()[-3000:]
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@dataclass
class Exchange:
    """An exchange with participants whose private keys the test holds."""

    id: str
    keys: dict[str, PrivateKey]
    organizer: str


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def create_exchange(url: str, size: int, *, organizer: str = "organizer-elf") -> Exchange:
    """Create an exchange of ``size`` participants through ``url`` (any replica)."""
    token = tokens().issue(sub=organizer, role=Role.OPERATOR)
    created = httpx.post(
        url + "/api/v1/exchanges",
        json={"name": "Replicated", "year": 2026, "region": "north", "rules": {}},
        headers=bearer(token),
        timeout=30,
    )
    assert created.status_code == 201, created.text
    exchange_id = created.json()["id"]
    keys = {f"elf-{i:03d}": new_private_key() for i in range(size)}
    people = [
        {"id": pid, "region": "north", "budget": 20, "public_key": public_key_b64(key)}
        for pid, key in keys.items()
    ]
    joined = httpx.post(
        f"{url}/api/v1/exchanges/{exchange_id}/participants",
        json={"participants": people},
        headers=bearer(token),
        timeout=30,
    )
    assert joined.status_code == 201, joined.text
    return Exchange(exchange_id, keys, organizer)


def organizer_token(exchange: Exchange) -> str:
    """The organizer's operator token."""
    return tokens().issue(sub=exchange.organizer, role=Role.OPERATOR)


def status(url: str, exchange: Exchange) -> dict[str, Any]:
    """The exchange as ``url`` reads it."""
    response = httpx.get(
        f"{url}/api/v1/exchanges/{exchange.id}",
        headers=bearer(organizer_token(exchange)),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def revealed_pairs(url: str, exchange: Exchange) -> dict[str, str]:
    """Open every participant's sealed match (read through ``url``) with their key."""
    pairs: dict[str, str] = {}
    for pid, key in exchange.keys.items():
        token = tokens().issue(sub=pid, role=Role.PARTICIPANT)
        answer = httpx.get(
            f"{url}/api/v1/exchanges/{exchange.id}/matches/{pid}", headers=bearer(token), timeout=10
        )
        assert answer.status_code == 200, answer.text
        payload = orjson.loads(SealedBox(key).decrypt(base64.b64decode(answer.json()["sealed"])))
        pairs[payload["giver"]] = payload["receiver"]
    return pairs


def commitments_root(url: str, exchange: Exchange) -> str:
    """The root recomputed from the published commitment list (must equal the stored root)."""
    answer = httpx.get(
        f"{url}/api/v1/exchanges/{exchange.id}/commitments",
        headers=bearer(organizer_token(exchange)),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    listed = {c["giver"]: c["commitment"] for c in body["commitments"]}
    assert len(listed) == len(exchange.keys)
    root = commitment_root(listed)
    assert root == body["commitment_root"]
    return root


def assert_one_valid_matching(pairs: Mapping[str, str], people: Mapping[str, Any]) -> None:
    """Everybody gives once and receives once, never to themselves."""
    assert set(pairs) == set(people)
    assert sorted(pairs.values()) == sorted(people)
    assert all(giver != receiver for giver, receiver in pairs.items())
