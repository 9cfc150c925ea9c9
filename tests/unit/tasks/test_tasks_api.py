"""HTTP tests of the task queue routes, through FastAPI's TestClient on ``build_app``.

Every test gets a fresh app (Gift ID generator + task queue on SQLite in
``tmp_path``) driven by a FakeClock; the sweeper runs every 20 ms of real time
against the fake time, so "after a sweep" means "advance the clock, then poll".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.clock import FakeClock
from northpole.core.settings import AuthSettings, Settings, TaskSettings
from northpole.system import build_app
from northpole.tasks.scheduler import partition_of

START_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
START_RFC = "2026-01-01T00:00:00.123Z"
SECRET = "tasks-api-test-secret-0123456789abcdef0123456789"
PARTITIONS = 16
DEFAULT_BODY_LIMIT = 8_388_608
TASKS = "/api/v1/tasks"
QUEUES = "/api/v1/queues"
SWEEP_WAIT_S = 5.0  # generous: the sweeper runs every 20 ms, but CI machines stall
TASK_FIELDS = {
    "id",
    "gift_id",
    "task_type",
    "priority",
    "dependencies",
    "retry_count",
    "max_retries",
    "deadline",
    "metadata",
    "idempotency_key",
    "state",
    "attempts",
    "partition",
    "fence",
    "worker_id",
    "created_at",
    "updated_at",
    "available_at",
    "started_at",
    "finished_at",
    "lease_until",
    "last_error",
    "result",
}

T = TypeVar("T")


def make_settings(data_dir: Path) -> Settings:
    """Return settings with a fixed secret, the default body limit and a 20 ms sweeper."""
    return Settings(
        data_dir=data_dir,
        auth=AuthSettings(secret=SecretStr(SECRET)),
        tasks=TaskSettings(partitions=PARTITIONS, sweep_interval_ms=20),
    )


def rfc(ms: int) -> str:
    """Return Unix ms as the API writes times (RFC 3339 UTC with milliseconds)."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return f"{seconds}.{ms % 1000:03d}Z"


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None
) -> dict[str, Any]:
    """Check the status and the one JSON error body shape; return the inner error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def is_decimal_id(value: object) -> bool:
    """Whether ``value`` is a canonical decimal id string."""
    return isinstance(value, str) and value.isdigit() and str(int(value)) == value


def eventually(check: Callable[[], T | None], timeout: float = SWEEP_WAIT_S) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def metric(text: str, name: str, **labels: str) -> float | None:
    """Return the value of the first sample ``name`` whose labels include ``labels``."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def task(gift_id: int | str = 1, task_type: str = "build", **fields: Any) -> dict[str, Any]:
    """Return one task body."""
    return {"gift_id": str(gift_id), "task_type": task_type, **fields}


@dataclass
class Api:
    """A running app with its fake clock and settings, and shorthands for its routes."""

    client: TestClient
    clock: FakeClock
    settings: Settings

    def auth(self, role: Role | str = Role.OPERATOR) -> dict[str, str]:
        """Return an Authorization header for ``role`` issued at the app's clock."""
        tokens = TokenService(load_secret(self.settings), self.settings.auth, clock=self.clock)
        return {"Authorization": f"Bearer {tokens.issue(sub='tester', role=role, ttl_s=3600)}"}

    def post(self, path: str, body: Any = None, role: Role = Role.OPERATOR) -> httpx.Response:
        """POST ``body`` as JSON (no body if None) with a token of ``role``."""
        return self.client.post(path, json=body, headers=self.auth(role))

    def submit(self, body: dict[str, Any]) -> Any:
        """Submit one task or a batch; expect 201 and return the JSON answer."""
        response = self.post(TASKS, body)
        assert response.status_code == 201, response.text
        return response.json()

    def submit_ids(self, *tasks: dict[str, Any]) -> list[str]:
        """Submit ``tasks`` as one batch and return their ids."""
        return [t["id"] for t in self.submit({"tasks": list(tasks)})["tasks"]]

    def get(self, task_id: str) -> dict[str, Any]:
        """Read one task (expecting 200)."""
        response = self.client.get(f"{TASKS}/{task_id}", headers=self.auth())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def claim(self, worker: str = "w1", **body: Any) -> list[dict[str, Any]]:
        """Claim as ``worker``; return the tasks handed over."""
        response = self.post(f"/api/v1/workers/{worker}/claim", body, Role.WORKER)
        assert response.status_code == 200, response.text
        tasks: list[dict[str, Any]] = response.json()["tasks"]
        return tasks

    def heartbeat(self, worker: str = "w1", **body: Any) -> dict[str, Any]:
        """Heartbeat as ``worker``; return the answer."""
        response = self.post(f"/api/v1/workers/{worker}/heartbeat", body, Role.WORKER)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def complete(self, held: dict[str, Any], **body: Any) -> httpx.Response:
        """Report success of a claimed task (as its holder unless ``body`` says otherwise)."""
        payload = {"worker_id": held["worker_id"], "fence": held["fence"], **body}
        return self.post(f"{TASKS}/{held['id']}/complete", payload, Role.WORKER)

    def fail(self, held: dict[str, Any], **body: Any) -> httpx.Response:
        """Report a failed attempt of a claimed task."""
        payload = {"worker_id": held["worker_id"], "fence": held["fence"], **body}
        return self.post(f"{TASKS}/{held['id']}/fail", payload, Role.WORKER)

    def queues(self) -> dict[str, Any]:
        """Read the queues report."""
        response = self.client.get(QUEUES, headers=self.auth())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> str:
        """Return the /metrics text."""
        response = self.client.get("/metrics")
        assert response.status_code == 200
        return response.text

    def wait_state(self, task_id: str, state: str) -> dict[str, Any]:
        """Poll until the task is in ``state`` (the sweeper runs in the background)."""

        def reached() -> dict[str, Any] | None:
            current = self.get(task_id)
            return current if current["state"] == state else None

        return eventually(reached)


def running_api(data_dir: Path) -> Iterator[Api]:
    """Start an app (idgen + tasks) on ``data_dir``, driven by a FakeClock; stop it after."""
    settings = make_settings(data_dir)
    clock = FakeClock(START_MS)
    with TestClient(build_app(settings, clock=clock)) as client:
        yield Api(client, clock, settings)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A started app on a fresh data directory, for tests that change the queue."""
    yield from running_api(tmp_path)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app shared by the tests whose requests are all refused: its queue stays empty."""
    yield from running_api(tmp_path_factory.mktemp("idle"))


# -- submitting ----------------------------------------------------------------------


def test_submit_one_task_returns_the_documented_fields(api: Api) -> None:
    """A single task comes back 201 with every documented field, decimal ids and PENDING."""
    deadline_ms = START_MS + 3_600_000
    body = task(
        1234567,
        "build_toy",
        priority=7,
        max_retries=5,
        deadline=rfc(deadline_ms),
        metadata={"colour": "red"},
        idempotency_key="gift-1234567-build",
    )
    response = api.post(TASKS, body)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    got = response.json()
    assert set(got) == TASK_FIELDS
    assert is_decimal_id(got["id"])
    assert got["gift_id"] == "1234567"
    assert got["task_type"] == "build_toy"
    assert got["priority"] == 7
    assert got["max_retries"] == 5
    assert got["deadline"] == rfc(deadline_ms)
    assert got["metadata"] == {"colour": "red"}
    assert got["idempotency_key"] == "gift-1234567-build"
    assert got["state"] == "PENDING"
    assert got["dependencies"] == []
    assert (got["attempts"], got["retry_count"], got["fence"]) == (0, 0, 0)
    assert 0 <= got["partition"] < PARTITIONS
    assert got["partition"] == partition_of(1234567, PARTITIONS)
    assert got["created_at"] == got["updated_at"] == got["available_at"] == START_RFC
    for unset in ("worker_id", "started_at", "finished_at", "lease_until", "last_error"):
        assert got[unset] is None
    assert got["result"] is None
    assert api.get(got["id"]) == got


def test_submit_defaults(api: Api) -> None:
    """Only gift_id and task_type are required; the rest takes the documented defaults."""
    got = api.submit(task(5))
    assert got["priority"] == 0
    assert got["max_retries"] == 3
    assert got["deadline"] is None
    assert got["metadata"] == {}
    assert got["idempotency_key"] is None


def test_submit_accepts_unknown_task_type(api: Api) -> None:
    """Task types are free text: a type no worker handles is still stored (201)."""
    got = api.submit(task(1, "feed_the_reindeer_at_midnight"))
    assert got["task_type"] == "feed_the_reindeer_at_midnight"
    assert got["state"] == "PENDING"


def test_submit_accepts_values_at_the_limits(api: Api) -> None:
    """Priorities at int32 bounds, 0 and 100 retries, 100-char types and 16 KiB metadata pass."""
    full_metadata = {"k": "x" * (16_384 - 1)}
    ids = api.submit_ids(
        task(0, "t" * 100, priority=2**31 - 1, max_retries=0, metadata=full_metadata),
        task(2**63 - 1, "t", priority=-(2**31), max_retries=100),
    )
    first, second = (api.get(i) for i in ids)
    assert (first["priority"], first["max_retries"]) == (2**31 - 1, 0)
    assert first["metadata"] == full_metadata
    assert first["gift_id"] == "0"
    assert (second["priority"], second["max_retries"]) == (-(2**31), 100)
    assert second["gift_id"] == str(2**63 - 1)


def test_submit_batch_resolves_refs_and_dependencies(api: Api) -> None:
    """A batch comes back 201 in order; refs and stored task ids become dependency ids."""
    earlier = api.submit(task(9, "paint"))["id"]
    got = api.submit(
        {
            "tasks": [
                task(1, "build", ref="b"),
                task(1, "wrap", ref="w", dependencies=["b", earlier]),
                task(1, "load", dependencies=["w", "b"]),
            ]
        }
    )
    build, wrap, load = got["tasks"]
    assert [t["task_type"] for t in got["tasks"]] == ["build", "wrap", "load"]
    assert all(is_decimal_id(t["id"]) for t in got["tasks"])
    assert len({build["id"], wrap["id"], load["id"], earlier}) == 4
    assert build["dependencies"] == []
    assert wrap["dependencies"] == [build["id"], earlier]
    assert load["dependencies"] == [wrap["id"], build["id"]]
    assert {t["state"] for t in got["tasks"]} == {"PENDING"}
    assert api.get(load["id"])["dependencies"] == [wrap["id"], build["id"]]


def test_submit_batch_of_10000_fits_the_default_body_limit(api: Api) -> None:
    """The largest batch (10,000 tasks) fits the default body limit and is stored whole."""
    body = {"tasks": [task(i, "wrap") for i in range(10_000)]}
    assert len(orjson.dumps(body)) < DEFAULT_BODY_LIMIT
    got = api.submit(body)["tasks"]
    assert len(got) == 10_000
    assert len({t["id"] for t in got}) == 10_000
    assert [t["gift_id"] for t in got] == [str(i) for i in range(10_000)]
    depth = sum(row["count"] for row in api.queues()["depths"] if row["state"] == "PENDING")
    assert depth == 10_000


def test_idempotency_key_returns_the_same_task(api: Api) -> None:
    """Resubmitting a task with a stored idempotency key returns the stored task, not a new one."""
    first = api.submit(task(1, "wrap", idempotency_key="wrap-1"))
    again = api.submit(task(1, "wrap", idempotency_key="wrap-1", priority=9))
    assert again["id"] == first["id"]
    assert again["priority"] == first["priority"] == 0
    in_batch = api.submit_ids(task(2, "wrap"), task(1, "wrap", idempotency_key="wrap-1"))
    assert in_batch[1] == first["id"]
    pending = sum(row["count"] for row in api.queues()["depths"])
    assert pending == 2


BAD_TASKS: list[tuple[str, dict[str, Any], str]] = [
    ("missing gift_id", {"task_type": "build"}, "gift_id"),
    ("missing task_type", {"gift_id": "1"}, "task_type"),
    ("gift_id not decimal", task("abc"), "gift_id"),
    ("gift_id negative", {"gift_id": -1, "task_type": "build"}, "gift_id"),
    ("gift_id negative string", task("-1"), "gift_id"),
    ("gift_id too big", task(str(2**63)), "gift_id"),
    ("gift_id 20 digits", task("1" * 20), "gift_id"),
    ("gift_id bool", {"gift_id": True, "task_type": "build"}, "gift_id"),
    ("empty task_type", task(1, ""), "task_type"),
    ("task_type too long", task(1, "t" * 101), "task_type"),
    ("task_type not a string", {"gift_id": "1", "task_type": 5}, "task_type"),
    ("priority as string", task(priority="1"), "priority"),
    ("priority above int32", task(priority=2**31), "priority"),
    ("priority below int32", task(priority=-(2**31) - 1), "priority"),
    ("priority float", task(priority=1.5), "priority"),
    ("max_retries negative", task(max_retries=-1), "max_retries"),
    ("max_retries over 100", task(max_retries=101), "max_retries"),
    ("deadline in the past", task(deadline="2025-12-31T23:59:59.000Z"), "deadline"),
    ("deadline now", task(deadline=START_RFC), "deadline"),
    ("deadline without timezone", task(deadline="2026-06-01T00:00:00"), "deadline"),
    ("deadline not a time", task(deadline="tomorrow"), "deadline"),
    ("metadata value not a string", task(metadata={"a": 1}), "metadata.a"),
    ("metadata a list", task(metadata=["x"]), "metadata"),
    ("metadata over 16 KiB", task(metadata={"k": "x" * 16_384}), "metadata"),
    ("unknown key", task(colour="red"), "colour"),
    ("dependencies not a list", task(dependencies="x"), "dependencies"),
    ("unknown dependency id", task(dependencies=["123456789"]), "dependencies"),
    ("dependency id over int64", task(dependencies=["9999999999999999999"]), "dependencies"),
    ("negative dependency id", task(dependencies=["-5"]), "dependencies"),
    ("unknown ref", task(dependencies=["nosuch"]), "dependencies"),
    ("empty ref", task(ref=""), "ref"),
    ("empty idempotency key", task(idempotency_key=""), "idempotency_key"),
    (
        "cycle via refs",
        {
            "tasks": [
                task(1, "a", ref="a", dependencies=["c"]),
                task(1, "b", ref="b", dependencies=["a"]),
                task(1, "c", ref="c", dependencies=["b"]),
            ]
        },
        "dependencies",
    ),
    ("depends on itself", {"tasks": [task(ref="a", dependencies=["a"])]}, "dependencies"),
    ("duplicate ref", {"tasks": [task(ref="a"), task(ref="a")]}, "tasks.1.ref"),
    ("empty tasks list", {"tasks": []}, "tasks"),
    ("tasks not a list", {"tasks": {"gift_id": "1"}}, "tasks"),
    ("bad task in a batch", {"tasks": [task(), task("abc")]}, "tasks.1.gift_id"),
    ("unknown key beside tasks", {"tasks": [task()], "priority": 1}, "priority"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in BAD_TASKS], ids=[n for n, _, _ in BAD_TASKS]
)
def test_submit_rejects_bad_input_naming_the_field(
    idle: Api, body: dict[str, Any], field: str
) -> None:
    """A bad task or batch is a 422 invalid_input naming the offending field; nothing is stored."""
    response = idle.post(TASKS, body)
    assert_error(response, 422, "invalid_input", field)
    assert idle.queues()["depths"] == []


@pytest.mark.parametrize(
    "raw", [b"{bad json", b'{"gift_id": "1"', b"", b"[1, 2]", b'"task"', b"5", b"null"]
)
def test_submit_rejects_bodies_that_are_not_a_json_object(idle: Api, raw: bytes) -> None:
    """Malformed JSON and JSON that is not an object are 422 invalid_input on field body."""
    headers = {**idle.auth(), "Content-Type": "application/json"}
    response = idle.client.post(TASKS, content=raw, headers=headers)
    assert_error(response, 422, "invalid_input", "body")


def test_submit_rejects_batch_of_10001(idle: Api) -> None:
    """A batch one task over the maximum is refused on field tasks."""
    response = idle.post(TASKS, {"tasks": [task(i) for i in range(10_001)]})
    assert_error(response, 422, "invalid_input", "tasks")
    assert idle.queues()["depths"] == []


def test_submit_rejects_body_over_the_limit_with_413(idle: Api) -> None:
    """A body over http.max_body_bytes is refused with 413 payload_too_large before parsing."""
    body = orjson.dumps(task(metadata={"k": "x"})).ljust(DEFAULT_BODY_LIMIT + 1)
    response = idle.client.post(TASKS, content=body, headers=idle.auth())
    assert_error(response, 413, "payload_too_large", "body")


@pytest.mark.parametrize(
    "last",
    [
        task(3, dependencies=["123456789"]),
        task(3, dependencies=["nosuch"]),
        task(3, deadline="2020-01-01T00:00:00Z"),
        task(3, ref="first"),
    ],
    ids=["unknown dependency", "unknown ref", "past deadline", "duplicate ref"],
)
def test_batch_whose_last_task_is_bad_stores_nothing(api: Api, last: dict[str, Any]) -> None:
    """A batch is all-or-nothing: when its last task is refused, none of the others is stored."""
    batch = [task(1, ref="first"), task(2, dependencies=["first"]), last]
    response = api.post(TASKS, {"tasks": batch})
    assert response.status_code == 422, response.text
    assert api.queues()["depths"] == []
    assert api.claim(limit=10) == []


def test_task_depending_on_a_failed_task_is_stored_failed(api: Api) -> None:
    """A new task whose dependency already FAILED is stored FAILED with dependency_failed."""
    doomed = api.submit(task(1, "build"))["id"]
    assert api.post(f"{TASKS}/{doomed}/cancel").status_code == 200
    got = api.submit(task(1, "wrap", dependencies=[doomed]))
    assert got["state"] == "FAILED"
    assert got["last_error"].startswith("dependency_failed")


# -- reading --------------------------------------------------------------------------


def test_get_task_found(api: Api) -> None:
    """GET of a stored task returns it."""
    submitted = api.submit(task(42, "wrap"))
    assert api.get(submitted["id"]) == submitted


def test_get_unknown_task_is_404(idle: Api) -> None:
    """GET of an id nobody stored is 404 task_not_found on field id."""
    response = idle.client.get(f"{TASKS}/123456789", headers=idle.auth())
    assert_error(response, 404, "task_not_found", "id")


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", str(2**63), "1" * 20])
def test_get_malformed_id_is_422(idle: Api, bad: str) -> None:
    """GET with a path id that is not a decimal int64 is 422 on field id."""
    response = idle.client.get(f"{TASKS}/{bad}", headers=idle.auth())
    assert_error(response, 422, "invalid_input", "id")


# -- the worker protocol -----------------------------------------------------------------


def test_claim_honours_limit_task_types_and_group(api: Api) -> None:
    """Claims hand out at most ``limit`` tasks of the asked types, each to one worker only."""
    ids = api.submit_ids(*(task(i, "build") for i in range(3)), task(7, "wrap"), task(8, "wrap"))
    wraps = api.claim("w1", task_types=["wrap"], limit=5)
    assert sorted(t["id"] for t in wraps) == sorted(ids[3:])
    builds = api.claim("w2", limit=2, lease_s=5)
    assert len(builds) == 2
    assert {t["task_type"] for t in builds} == {"build"}
    other = api.claim("w3", group="other", limit=10)
    assert len(other) == 1
    assert api.claim("w4", limit=10) == []
    handed = [t["id"] for t in (*wraps, *builds, *other)]
    assert sorted(handed) == sorted(ids)
    for claimed in (*wraps, *builds, *other):
        assert claimed["state"] == "ASSIGNED"
        assert (claimed["attempts"], claimed["fence"]) == (1, 1)
    assert {t["worker_id"] for t in builds} == {"w2"}
    assert {t["lease_until"] for t in builds} == {rfc(START_MS + 5_000)}
    assert {t["lease_until"] for t in wraps} == {rfc(START_MS + 30_000)}
    assert api.get(other[0]["id"])["worker_id"] == "w3"
    groups = {g["group"]: g["workers"] for g in api.queues()["groups"]}
    assert groups == {"default": 3, "other": 1}


def test_claim_takes_higher_priority_first(api: Api) -> None:
    """Of tasks queued at the same time, the highest priority is claimed first."""
    ids = api.submit_ids(task(1, priority=0), task(2, priority=5), task(3, priority=-3))
    order = [api.claim(limit=1)[0]["id"] for _ in range(3)]
    assert order == [ids[1], ids[0], ids[2]]


def test_claim_without_body_takes_one_task(api: Api) -> None:
    """A claim with an empty body claims one task in the default group."""
    api.submit_ids(task(1), task(2))
    response = api.client.post("/api/v1/workers/w1/claim", headers=api.auth(Role.WORKER))
    assert response.status_code == 200, response.text
    assert len(response.json()["tasks"]) == 1


def test_claim_long_poll_returns_when_a_task_is_submitted(api: Api) -> None:
    """A claim waiting with wait_s returns as soon as another client submits a task."""
    got: dict[str, Any] = {}

    def wait_for_work() -> None:
        try:
            got["tasks"] = api.claim("waiter", wait_s=20)
        except BaseException as exc:  # reported by the test thread
            got["error"] = exc
        got["returned"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_work, daemon=True)
    waiter.start()
    # The claim has reached the store (and found nothing) once its worker shows up.
    eventually(lambda: api.queues()["groups"])
    time.sleep(0.1)
    assert waiter.is_alive()
    submitted = api.submit(task(1, "wrap"))["id"]
    submitted_at = time.monotonic()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert "error" not in got, got.get("error")
    assert [t["id"] for t in got["tasks"]] == [submitted]
    assert got["returned"] - submitted_at < 5  # far sooner than wait_s


def test_claim_long_poll_returns_empty_after_wait_s(api: Api) -> None:
    """A claim waiting with wait_s returns an empty list once wait_s passes without work."""
    api.submit(task(1, "wrap"))
    started = time.monotonic()
    assert api.claim(task_types=["build"], wait_s=0.3) == []
    assert 0.25 <= time.monotonic() - started < 3


def test_heartbeat_starts_tasks_and_extends_leases(api: Api) -> None:
    """A heartbeat moves started tasks to IN_PROGRESS and extends the leases of held tasks."""
    api.submit_ids(task(1), task(2))
    first, second = api.claim(limit=2)
    api.clock.advance(10_000)
    answer = api.heartbeat(
        concurrency=4,
        started=[{"id": first["id"], "fence": first["fence"]}],
        holding=[{"id": t["id"], "fence": t["fence"]} for t in (first, second)],
    )
    assert answer["cancel"] == []
    assert isinstance(answer["partitions"], list)
    assert sorted(answer["partitions"]) == list(range(PARTITIONS))  # alone in its group
    now = START_MS + 10_000
    running = api.get(first["id"])
    assert running["state"] == "IN_PROGRESS"
    assert running["started_at"] == rfc(now)
    assert running["lease_until"] == rfc(now + 30_000)
    waiting = api.get(second["id"])
    assert waiting["state"] == "ASSIGNED"
    assert waiting["lease_until"] == rfc(now + 30_000)


def test_heartbeat_lists_held_tasks_that_were_taken_away(api: Api) -> None:
    """Held tasks that were cancelled, or shown with a wrong fence, come back in ``cancel``."""
    api.submit_ids(task(1), task(2), task(3))
    cancelled, wrong_fence, fine = api.claim(limit=3)
    assert api.post(f"{TASKS}/{cancelled['id']}/cancel").status_code == 200
    answer = api.heartbeat(
        holding=[
            {"id": cancelled["id"], "fence": cancelled["fence"]},
            {"id": wrong_fence["id"], "fence": wrong_fence["fence"] + 1},
            {"id": fine["id"], "fence": fine["fence"]},
        ]
    )
    assert sorted(answer["cancel"]) == sorted([cancelled["id"], wrong_fence["id"]])


def test_complete_records_the_result(api: Api) -> None:
    """The holder's complete makes the task COMPLETED with its result and finish time."""
    api.submit(task(1))
    [held] = api.claim()
    api.clock.advance(1_500)
    response = api.complete(held, result="a shiny red bike")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": held["id"], "state": "COMPLETED"}
    done = api.get(held["id"])
    assert done["state"] == "COMPLETED"
    assert done["result"] == "a shiny red bike"
    assert done["finished_at"] == rfc(START_MS + 1_500)
    assert done["worker_id"] is None
    assert done["lease_until"] is None


def test_fail_with_retry_returns_the_task_to_pending_later(api: Api) -> None:
    """A failed attempt with retries left is PENDING again, retry_count 1, available later."""
    api.submit(task(1))
    [held] = api.claim()
    response = api.fail(held, error="glue not dry")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": held["id"], "state": "PENDING"}
    again = api.get(held["id"])
    assert again["state"] == "PENDING"
    assert again["retry_count"] == 1
    assert again["attempts"] == 1
    assert again["last_error"] == "handler_error: glue not dry"
    assert again["available_at"] > rfc(START_MS)  # RFC 3339 UTC strings order like times
    assert again["worker_id"] is None
    assert api.claim() == []  # still backing off
    api.clock.advance(1_000)  # the first retry waits at most retry_base_ms
    [retried] = api.claim()
    assert (retried["id"], retried["attempts"], retried["fence"]) == (held["id"], 2, 2)


def test_fail_with_explicit_delay(api: Api) -> None:
    """retry_delay_s sets the backoff of the retry exactly."""
    api.submit(task(1))
    [held] = api.claim()
    assert api.fail(held, error="x", retry_delay_s=2.5).status_code == 200
    assert api.get(held["id"])["available_at"] == rfc(START_MS + 2_500)


def test_fail_without_retry_is_failed(api: Api) -> None:
    """A failed attempt with retry false ends FAILED at once, whatever retries are left."""
    api.submit(task(1, max_retries=5))
    [held] = api.claim()
    response = api.fail(held, error="wrong colour", retry=False)
    assert response.json() == {"id": held["id"], "state": "FAILED"}
    failed = api.get(held["id"])
    assert failed["state"] == "FAILED"
    assert failed["last_error"] == "handler_error: wrong colour"
    assert failed["retry_count"] == 0


def test_fail_after_last_retry_is_failed(api: Api) -> None:
    """With max_retries 0, a failed attempt that asks for a retry still ends FAILED."""
    api.submit(task(1, max_retries=0))
    [held] = api.claim()
    assert api.fail(held, error="no").json()["state"] == "FAILED"


@pytest.mark.parametrize("route", ["complete", "fail"])
@pytest.mark.parametrize("wrong", ["fence", "worker_id"])
def test_report_without_holding_is_stale_fence(api: Api, route: str, wrong: str) -> None:
    """Complete or fail with another fence or worker id is 409 stale_fence and changes nothing."""
    api.submit(task(1))
    [held] = api.claim()
    impostor = {"fence": held["fence"] + 1} if wrong == "fence" else {"worker_id": "w2"}
    response = getattr(api, route)(held, **impostor)
    assert_error(response, 409, "stale_fence", "fence")
    still = api.get(held["id"])
    assert (still["state"], still["worker_id"], still["fence"]) == ("ASSIGNED", "w1", 1)


def test_report_of_unknown_task_is_404(idle: Api) -> None:
    """Complete of a task id nobody stored is 404 task_not_found."""
    response = idle.complete({"id": "123456789", "worker_id": "w1", "fence": 1})
    assert_error(response, 404, "task_not_found", "id")


def test_ack_batch_reports_each_item(api: Api) -> None:
    """A batch ack applies each entry on its own: good ones succeed, stale ones are reported."""
    api.submit_ids(task(1), task(2), task(3))
    one, two, three = api.claim(limit=3)
    body = {
        "completed": [
            {"id": one["id"], "fence": one["fence"], "result": "ok"},
            {"id": two["id"], "fence": two["fence"] + 7},
            {"id": "123456789", "fence": 1},
        ],
        "failed": [{"id": three["id"], "fence": three["fence"], "error": "boom", "retry": False}],
    }
    response = api.post("/api/v1/workers/w1/ack", body, Role.WORKER)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["id"], r["ok"], r["state"]) for r in results] == [
        (one["id"], True, "COMPLETED"),
        (two["id"], False, None),
        ("123456789", False, None),
        (three["id"], True, "FAILED"),
    ]
    assert results[0]["error"] is None
    assert results[1]["error"]["code"] == "stale_fence"
    assert results[1]["error"]["field"] == "fence"
    assert results[2]["error"]["code"] == "task_not_found"
    assert api.get(one["id"])["result"] == "ok"
    assert api.get(two["id"])["state"] == "ASSIGNED"
    assert api.get(three["id"])["last_error"] == "handler_error: boom"


@pytest.mark.parametrize("route", ["claim", "heartbeat", "ack"])
@pytest.mark.parametrize("worker", ["bad!id", "w" * 129, "sp%20ace"])
def test_bad_worker_id_in_path_is_422(idle: Api, route: str, worker: str) -> None:
    """A worker id outside 1-128 of [A-Za-z0-9._:@-] is 422 on field worker_id."""
    response = idle.post(f"/api/v1/workers/{worker}/{route}", {}, Role.WORKER)
    assert_error(response, 422, "invalid_input", "worker_id")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "1"}, "limit"),
        ({"wait_s": 31}, "wait_s"),
        ({"wait_s": -1}, "wait_s"),
        ({"lease_s": 0.5}, "lease_s"),
        ({"group": ""}, "group"),
        ({"task_types": "build"}, "task_types"),
        ({"worker": "w1"}, "worker"),
    ],
)
def test_claim_rejects_bad_body(idle: Api, body: dict[str, Any], field: str) -> None:
    """Claim parameters out of range are 422 naming the field."""
    response = idle.post("/api/v1/workers/w1/claim", body, Role.WORKER)
    assert_error(response, 422, "invalid_input", field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("heartbeat", {"concurrency": 0}, "concurrency"),
        ("heartbeat", {"holding": [{"id": "abc", "fence": 1}]}, "holding.0.id"),
        ("heartbeat", {"started": [{"id": "1"}]}, "started.0.fence"),
        ("ack", {"completed": [{"id": "1", "fence": -1}]}, "completed.0.fence"),
        ("ack", {"failed": [{"id": "1", "fence": 1, "retry": "yes"}]}, "failed.0.retry"),
    ],
)
def test_worker_routes_reject_bad_bodies(
    idle: Api, path: str, body: dict[str, Any], field: str
) -> None:
    """Heartbeat and ack bodies are validated with the offending field named."""
    response = idle.post(f"/api/v1/workers/w1/{path}", body, Role.WORKER)
    assert_error(response, 422, "invalid_input", field)


@pytest.mark.parametrize("route", ["complete", "fail"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"fence": 1}, "worker_id"),
        ({"worker_id": "w1"}, "fence"),
        ({"worker_id": "w1", "fence": "1"}, "fence"),
        ({"worker_id": "", "fence": 1}, "worker_id"),
    ],
)
def test_complete_and_fail_reject_bad_bodies(
    idle: Api, route: str, body: dict[str, Any], field: str
) -> None:
    """Complete and fail need a worker_id and an integer fence."""
    response = idle.post(f"{TASKS}/1/{route}", body, Role.WORKER)
    assert_error(response, 422, "invalid_input", field)


# -- dependencies ----------------------------------------------------------------------


def test_dependent_waits_until_its_dependency_completes(api: Api) -> None:
    """A task is not claimable until every dependency is COMPLETED."""
    build, wrap = api.submit_ids(task(1, "build", ref="b"), task(1, "wrap", dependencies=["b"]))
    [held] = api.claim(limit=10)
    assert held["id"] == build
    api.heartbeat(holding=[{"id": build, "fence": held["fence"]}])
    assert api.claim(limit=10) == []
    assert api.get(wrap)["state"] == "PENDING"
    assert api.complete(held).status_code == 200
    [released] = api.claim(limit=10)
    assert released["id"] == wrap


def test_dependency_on_a_completed_task_is_claimable_at_once(api: Api) -> None:
    """A task submitted after its dependency COMPLETED can be claimed straight away."""
    api.submit(task(1, "build"))
    [held] = api.claim()
    assert api.complete(held).status_code == 200
    wrap = api.submit(task(1, "wrap", dependencies=[held["id"]]))["id"]
    assert [t["id"] for t in api.claim()] == [wrap]


def test_final_failure_cascades_to_dependents(api: Api) -> None:
    """When a dependency fails finally, its PENDING dependents fail with dependency_failed."""
    build, wrap, load, other = api.submit_ids(
        task(1, "build", ref="b"),
        task(1, "wrap", ref="w", dependencies=["b"]),
        task(1, "load", dependencies=["w"]),
        task(2, "build"),
    )
    [held] = api.claim(task_types=["build"], limit=1)
    if held["id"] == other:  # equal priority and age: either may come first
        [held] = api.claim(task_types=["build"], limit=1)
    assert held["id"] == build
    assert api.fail(held, error="broken", retry=False).json()["state"] == "FAILED"
    for dependent in (wrap, load):
        failed = api.get(dependent)
        assert failed["state"] == "FAILED"
        assert failed["last_error"].startswith("dependency_failed")
    assert api.get(other)["state"] in {"PENDING", "ASSIGNED"}


# -- operators: cancel and re-drive ---------------------------------------------------------


def test_cancel_pending_task(api: Api) -> None:
    """Cancelling a PENDING task makes it FAILED with reason cancelled; it is never claimed."""
    task_id = api.submit(task(1))["id"]
    response = api.post(f"{TASKS}/{task_id}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["id"] == task_id
    assert cancelled["state"] == "FAILED"
    assert cancelled["last_error"] == "cancelled"
    assert api.claim() == []


def test_cancel_running_task_takes_it_from_the_worker(api: Api) -> None:
    """Cancelling an ASSIGNED task fails it; the holder's late complete is stale."""
    api.submit(task(1))
    [held] = api.claim()
    assert api.post(f"{TASKS}/{held['id']}/cancel").json()["state"] == "FAILED"
    assert_error(api.complete(held), 409, "stale_fence", "fence")


def test_cancel_completed_task_is_illegal(api: Api) -> None:
    """Cancelling a COMPLETED task is 409 illegal_transition, and it stays COMPLETED."""
    api.submit(task(1))
    [held] = api.claim()
    assert api.complete(held).status_code == 200
    response = api.post(f"{TASKS}/{held['id']}/cancel")
    assert_error(response, 409, "illegal_transition", "state")
    assert api.get(held["id"])["state"] == "COMPLETED"


def test_cancel_unknown_or_malformed_task(idle: Api) -> None:
    """Cancel of an unknown id is 404; of a malformed id 422."""
    assert_error(idle.post(f"{TASKS}/123456789/cancel"), 404, "task_not_found", "id")
    assert_error(idle.post(f"{TASKS}/abc/cancel"), 422, "invalid_input", "id")


def test_retry_redrives_a_failed_task(api: Api) -> None:
    """Re-driving a FAILED task puts it back to PENDING with a fresh retry budget."""
    api.submit(task(1, max_retries=1))
    [held] = api.claim()
    assert api.fail(held, error="x", retry=False).status_code == 200
    response = api.post(f"{TASKS}/{held['id']}/retry")
    assert response.status_code == 200, response.text
    again = response.json()
    assert again["state"] == "PENDING"
    assert again["retry_count"] == 0
    assert again["finished_at"] is None
    [reclaimed] = api.claim()
    assert (reclaimed["id"], reclaimed["attempts"]) == (held["id"], 2)


def test_retry_of_pending_task_is_illegal(api: Api) -> None:
    """Re-driving a task that is not FAILED is 409 illegal_transition."""
    task_id = api.submit(task(1))["id"]
    assert_error(api.post(f"{TASKS}/{task_id}/retry"), 409, "illegal_transition", "state")
    assert api.get(task_id)["state"] == "PENDING"


# -- time: deadlines and leases ---------------------------------------------------------------


def test_pending_task_expires_after_its_deadline(api: Api) -> None:
    """A PENDING task whose deadline passes is EXPIRED by the sweeper; its dependents FAIL."""
    deadline_ms = START_MS + 1_000
    late, dependent = api.submit_ids(
        task(1, "build", ref="b", deadline=rfc(deadline_ms)),
        task(1, "wrap", dependencies=["b"]),
    )
    time.sleep(0.1)  # a few sweeps before the deadline change nothing
    assert api.get(late)["state"] == "PENDING"
    api.clock.advance(1_000)
    expired = api.wait_state(late, "EXPIRED")
    assert expired["finished_at"] == rfc(deadline_ms)
    assert expired["deadline"] == rfc(deadline_ms)
    failed = api.wait_state(dependent, "FAILED")
    assert failed["last_error"].startswith("dependency_failed")
    assert api.claim(limit=10) == []


def test_running_task_past_its_deadline_fails(api: Api) -> None:
    """A claimed task whose deadline passes is FAILED with deadline_exceeded by the sweeper."""
    api.submit(task(1, deadline=rfc(START_MS + 1_000)))
    [held] = api.claim()
    api.clock.advance(1_001)
    failed = api.wait_state(held["id"], "FAILED")
    assert failed["last_error"].startswith("deadline_exceeded")
    assert_error(api.complete(held), 409, "stale_fence", "fence")


def test_expired_lease_returns_the_task_and_fences_off_the_old_holder(api: Api) -> None:
    """After its lease runs out the task is PENDING again; the old holder cannot complete it,
    the next claimer does, once."""
    task_id = api.submit(task(1))["id"]
    [held] = api.claim("w1", lease_s=1)
    api.clock.advance(1_001)
    back = api.wait_state(task_id, "PENDING")
    assert back["attempts"] == 1
    assert back["retry_count"] == 1
    assert back["last_error"].startswith("lease_expired")
    assert back["worker_id"] is None
    assert_error(api.complete(held, result="late"), 409, "stale_fence", "fence")
    assert_error(api.fail(held, error="late"), 409, "stale_fence", "fence")
    answer = api.heartbeat("w1", holding=[{"id": task_id, "fence": held["fence"]}])
    assert answer["cancel"] == [task_id]
    api.clock.advance(1_000)  # past the retry backoff
    [again] = api.claim("w2")
    assert (again["id"], again["fence"], again["attempts"]) == (task_id, 2, 2)
    assert api.complete(again, result="on time").status_code == 200
    assert_error(api.complete(again, result="twice"), 409, "stale_fence", "fence")
    assert_error(api.complete(held, result="late"), 409, "stale_fence", "fence")
    done = api.get(task_id)
    assert (done["state"], done["result"], done["attempts"]) == ("COMPLETED", "on time", 2)


def test_heartbeat_keeps_a_lease_alive(api: Api) -> None:
    """A worker that heartbeats before its lease runs out keeps the task."""
    task_id = api.submit(task(1))["id"]
    [held] = api.claim(lease_s=1)
    for _ in range(3):
        api.clock.advance(800)
        api.heartbeat(holding=[{"id": task_id, "fence": held["fence"]}], lease_s=1)
        time.sleep(0.05)  # a couple of sweeps
    assert api.get(task_id)["state"] == "ASSIGNED"
    assert api.complete(held).status_code == 200


# -- roles -------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, Any]] = [
    ("POST", TASKS, task()),
    ("GET", f"{TASKS}/1", None),
    ("POST", f"{TASKS}/1/cancel", None),
    ("POST", f"{TASKS}/1/retry", None),
    ("GET", QUEUES, None),
    ("POST", "/api/v1/workers/w1/claim", {}),
    ("POST", "/api/v1/workers/w1/heartbeat", {}),
    ("POST", "/api/v1/workers/w1/ack", {}),
    ("POST", f"{TASKS}/1/complete", {"worker_id": "w1", "fence": 1}),
    ("POST", f"{TASKS}/1/fail", {"worker_id": "w1", "fence": 1}),
]
ROUTE_IDS = [f"{m} {p}" for m, p, _ in ROUTES]


def call(api: Api, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """Send one request of :data:`ROUTES`."""
    return api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_participant_is_forbidden_everywhere(idle: Api, method: str, path: str, body: Any) -> None:
    """A participant token is 403 forbidden on every task queue route."""
    response = call(idle, method, path, body, idle.auth(Role.PARTICIPANT))
    assert_error(response, 403, "forbidden", None)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_no_token_is_unauthenticated_everywhere(
    idle: Api, method: str, path: str, body: Any
) -> None:
    """A request without a token is 401 unauthenticated with WWW-Authenticate: Bearer."""
    response = call(idle, method, path, body, {})
    assert_error(response, 401, "unauthenticated", None)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_forged_token_is_unauthenticated(idle: Api, method: str, path: str, body: Any) -> None:
    """A token signed with another secret is 401 on every route."""
    other = TokenService(b"another-secret-0123456789abcdef0123456789", idle.settings.auth)
    headers = {"Authorization": f"Bearer {other.issue(sub='x', role=Role.ADMIN)}"}
    assert_error(call(idle, method, path, body, headers), 401, "unauthenticated", None)


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_worker_may_not_cancel_or_retry(api: Api, action: str) -> None:
    """Cancel and re-drive are for operators: a worker token is 403 and nothing changes."""
    task_id = api.submit(task(1))["id"]
    response = api.post(f"{TASKS}/{task_id}/{action}", None, Role.WORKER)
    assert_error(response, 403, "forbidden", None)
    assert api.get(task_id)["state"] == "PENDING"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/workers/w1/claim", {}),
        ("/api/v1/workers/w1/heartbeat", {}),
        ("/api/v1/workers/w1/ack", {}),
        (f"{TASKS}/1/complete", {"worker_id": "w1", "fence": 1}),
        (f"{TASKS}/1/fail", {"worker_id": "w1", "fence": 1}),
    ],
)
def test_operator_may_not_use_worker_routes(idle: Api, path: str, body: Any) -> None:
    """Claims, heartbeats and reports are for workers: an operator token is 403."""
    assert_error(idle.post(path, body, Role.OPERATOR), 403, "forbidden", None)
    assert idle.queues()["groups"] == []


def test_worker_may_submit_and_read(api: Api) -> None:
    """Workers may submit follow-up tasks and read tasks and queues."""
    response = api.post(TASKS, task(1), Role.WORKER)
    assert response.status_code == 201, response.text
    headers = api.auth(Role.WORKER)
    assert api.client.get(f"{TASKS}/{response.json()['id']}", headers=headers).status_code == 200
    assert api.client.get(QUEUES, headers=headers).status_code == 200


def test_admin_may_do_everything(api: Api) -> None:
    """An admin token passes both the operator and the worker routes."""
    task_id = api.post(TASKS, task(1), Role.ADMIN).json()["id"]
    claimed = api.post("/api/v1/workers/admin-1/claim", {}, Role.ADMIN).json()["tasks"]
    assert [t["id"] for t in claimed] == [task_id]
    cancelled = api.post(f"{TASKS}/{task_id}/cancel", None, Role.ADMIN)
    assert cancelled.json()["state"] == "FAILED"
    redriven = api.post(f"{TASKS}/{task_id}/retry", None, Role.ADMIN)
    assert redriven.json()["state"] == "PENDING"


# -- reports: queues and metrics ------------------------------------------------------------


def test_queues_report_depths_ages_and_autoscaling_signal(api: Api) -> None:
    """GET /queues shows depths by type, priority, partition and state, the oldest pending
    age, and per group the desired number of workers from depth and processing time."""
    api.submit(task(100, "build"))
    [held] = api.claim("elf-1", group="elves", task_types=["build"])
    api.heartbeat(
        "elf-1",
        group="elves",
        task_types=["build"],
        started=[{"id": held["id"], "fence": held["fence"]}],
    )
    api.clock.advance(6_000)  # the one completed build took 6 s
    assert api.complete(held).status_code == 200
    gifts = list(range(20))
    api.submit({"tasks": [task(g, "build", priority=g % 2) for g in gifts]})
    api.submit(task(500, "wrap", priority=3))
    api.clock.advance(5_000)
    api.heartbeat("elf-1", group="elves", task_types=["build"], concurrency=1)
    report = api.queues()
    assert report["partitions"] == PARTITIONS
    depths = report["depths"]
    assert all(0 <= row["partition"] < PARTITIONS for row in depths)
    pending_builds = [r for r in depths if r["task_type"] == "build" and r["state"] == "PENDING"]
    assert sum(r["count"] for r in pending_builds) == 20
    for priority in (0, 1):
        expected: dict[int, int] = {}
        for g in gifts:
            if g % 2 == priority:
                part = partition_of(g, PARTITIONS)
                expected[part] = expected.get(part, 0) + 1
        got = {r["partition"]: r["count"] for r in pending_builds if r["priority"] == priority}
        assert got == expected
    completed = [r for r in depths if r["state"] == "COMPLETED"]
    assert completed == [
        {
            "task_type": "build",
            "priority": 0,
            "partition": partition_of(100, PARTITIONS),
            "state": "COMPLETED",
            "count": 1,
        }
    ]
    assert report["oldest_pending_age_s"] == {"build": 5.0, "wrap": 5.0}
    assert report["recent_processing_s"] == {"build": 6.0}
    [group] = report["groups"]
    assert group["group"] == "elves"
    assert group["workers"] == 1
    assert group["task_types"] == ["build"]
    assert group["depth"] == 20  # waiting and running builds; the wrap is not the group's
    assert group["avg_processing_s"] == 6.0
    assert group["desired_workers"] == 2  # ceil(20 * 6 / (1 * 60))


def test_queues_report_of_an_empty_queue(api: Api) -> None:
    """An empty queue reports no depths, ages or groups."""
    assert api.queues() == {
        "partitions": PARTITIONS,
        "depths": [],
        "oldest_pending_age_s": {},
        "recent_processing_s": {},
        "groups": [],
    }


def test_metrics_expose_depth_transitions_durations_and_utilization(api: Api) -> None:
    """/metrics shows queue depth, transitions by state, processing time and utilization."""
    assert metric(api.metrics(), "task_transitions_total", state="PENDING") == 0
    api.submit(task(1, "build"))
    [held] = api.claim(task_types=["build"])
    api.heartbeat(started=[{"id": held["id"], "fence": held["fence"]}])
    api.clock.advance(250)
    assert api.complete(held).status_code == 200
    api.submit_ids(*(task(g, "wrap", priority=2) for g in range(2, 5)))
    [wrap] = api.claim(task_types=["wrap"])
    api.heartbeat(concurrency=2, holding=[{"id": wrap["id"], "fence": wrap["fence"]}])
    api.clock.advance(1_000)  # gauges are refreshed by the sweeper at most once a second

    def refreshed() -> str | None:
        text = api.metrics()
        if metric(text, "worker_utilization", worker_id="w1") != 0.5:
            return None
        if metric(text, "task_queue_depth", queue="wrap", priority="2") != 2:
            return None
        return text

    text = eventually(refreshed)
    assert metric(text, "task_queue_depth", queue="build", priority="0") is None
    assert metric(text, "task_transitions_total", state="PENDING") == 4
    assert metric(text, "task_transitions_total", state="ASSIGNED") == 2
    assert metric(text, "task_transitions_total", state="IN_PROGRESS") == 1
    assert metric(text, "task_transitions_total", state="COMPLETED") == 1
    assert metric(text, "task_transitions_total", state="FAILED") == 0
    count = metric(text, "task_processing_duration_seconds_count", task_type="build")
    total = metric(text, "task_processing_duration_seconds_sum", task_type="build")
    assert (count, total) == (1, 0.25)
    assert metric(text, "task_desired_workers", group="default") == 1
