"""HTTP tests of the gift registry routes (SQLite, through FastAPI's TestClient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry_app import RegistryApp, eventually, registry_app

from northpole.bus.subjects import GIFT_CREATED, GIFT_STATUS_CHANGED
from northpole.core.auth import Role
from northpole.registry.settings import RegistrySettings

GIFTS = "/api/v1/gifts"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RegistryApp]:
    """A running app with a registry allowing batches of up to 50 gifts."""
    with registry_app(tmp_path, RegistrySettings(max_batch=50)) as app:
        yield app


def error_of(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    """Check a JSON error answer's status and field; return its error object."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]
    return error


def gift(recipient_id: str = "child-1", gift_type: str = "train") -> dict[str, str]:
    """One gift body."""
    return {"gift_type": gift_type, "recipient_id": recipient_id}


def create(api: RegistryApp, *gifts: dict[str, str]) -> list[dict[str, Any]]:
    """Register ``gifts`` in one batch; return them as answered."""
    response = api.client.post(GIFTS, json={"gifts": list(gifts)}, headers=api.auth())
    assert response.status_code == 201, response.text
    created: list[dict[str, Any]] = response.json()["gifts"]
    return created


def test_one_gift_is_registered_and_read_back(api: RegistryApp) -> None:
    """POST one gift answers 201 with a REQUESTED gift that GET returns the same."""
    response = api.client.post(GIFTS, json=gift("c9", "kite"), headers=api.auth())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "REQUESTED"
    assert (body["gift_type"], body["recipient_id"]) == ("kite", "c9")
    assert body["id"].isdigit()
    assert body["created_at"].endswith("Z")
    read = api.client.get(f"{GIFTS}/{body['id']}", headers=api.auth(Role.WORKER))
    assert read.json() == body


def test_batch_gets_distinct_ids(api: RegistryApp) -> None:
    """A batch registers every gift under its own id."""
    created = create(api, gift("a"), gift("b"), gift("c"))
    assert len({g["id"] for g in created}) == 3


def test_batch_with_one_bad_gift_stores_nothing(api: RegistryApp) -> None:
    """A batch with one invalid gift is refused naming it, and none of it is stored."""
    response = api.client.post(
        GIFTS, json={"gifts": [gift(), {"gift_type": "x", "recipient_id": ""}]}, headers=api.auth()
    )
    error_of(response, 422, "gifts.1.recipient_id")
    stats = api.client.get(f"{GIFTS}/stats", headers=api.auth()).json()
    assert sum(stats["by_status"].values()) == 0


def test_batch_over_the_limit_is_refused(api: RegistryApp) -> None:
    """More gifts than registry.max_batch get a 422 naming gifts."""
    response = api.client.post(GIFTS, json={"gifts": [gift()] * 51}, headers=api.auth())
    error_of(response, 422, "gifts")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'{"gift_type": "kite"}', "recipient_id"),
        (b'{"gift_type": 5, "recipient_id": "c"}', "gift_type"),
        (b'{"gift_type": "' + b"x" * 51 + b'", "recipient_id": "c"}', "gift_type"),
        (b'{"gift_type": "k", "recipient_id": "c", "status": "DELIVERED"}', "status"),
        (b'{"gifts": []}', "gifts"),
        (b"[]", "body"),
    ],
)
def test_bad_create_bodies_name_the_field(api: RegistryApp, body: bytes, field: str) -> None:
    """Malformed or invalid bodies get a 422 naming the offending field."""
    response = api.client.post(GIFTS, content=body, headers=api.auth())
    error_of(response, 422, field)


def test_unknown_gift_is_404_and_bad_id_is_422(api: RegistryApp) -> None:
    """Reading an id nobody created is a 404; a path that is no id is a 422 naming id."""
    error_of(api.client.get(f"{GIFTS}/12345", headers=api.auth()), 404, "id")
    error_of(api.client.get(f"{GIFTS}/abc", headers=api.auth()), 422, "id")


def test_listing_pages_through_one_recipients_gifts(api: RegistryApp) -> None:
    """Pages of one recipient's gifts, followed by cursor, hold each gift once, oldest first."""
    mine = create(api, *[gift("ann")] * 5)
    create(api, gift("bob"))
    seen: list[str] = []
    params: dict[str, Any] = {"recipient_id": "ann", "limit": 2}
    for _ in range(5):
        page = api.client.get(GIFTS, params=params, headers=api.auth()).json()
        seen += [g["id"] for g in page["gifts"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [g["id"] for g in mine]


def test_listing_filters_by_status_and_since(api: RegistryApp) -> None:
    """status and since filter the listing."""
    create(api, gift())
    none = api.client.get(GIFTS, params={"status": "DELIVERED"}, headers=api.auth()).json()
    assert none["gifts"] == []
    later = api.client.get(GIFTS, params={"since": "2100-01-01T00:00:00Z"}, headers=api.auth())
    assert later.json()["gifts"] == []
    everything = api.client.get(GIFTS, params={"since": "2020-01-01T00:00:00Z"}, headers=api.auth())
    assert len(everything.json()["gifts"]) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "garbage!"}, "cursor"),
        ({"status": "LOST"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
    ],
)
def test_bad_listing_parameters_name_the_field(
    api: RegistryApp, params: dict[str, Any], field: str
) -> None:
    """Bad query parameters get a 422 naming the parameter."""
    error_of(api.client.get(GIFTS, params=params, headers=api.auth()), 422, field)


def test_patch_changes_operator_fields(api: RegistryApp) -> None:
    """PATCH changes recipient_id and gift_type, and a later GET shows it (cache invalidated)."""
    (created,) = create(api, gift("c1", "ball"))
    url = f"{GIFTS}/{created['id']}"
    api.client.get(url, headers=api.auth())  # now cached
    response = api.client.patch(url, json={"recipient_id": "c2"}, headers=api.auth())
    assert response.status_code == 200, response.text
    assert api.client.get(url, headers=api.auth()).json()["recipient_id"] == "c2"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "DELIVERED"}, "status"),
        ({}, "body"),
        ({"gift_type": ""}, "gift_type"),
        ({"workshop_id": 3}, "workshop_id"),
    ],
)
def test_patch_refuses_what_an_operator_may_not_change(
    api: RegistryApp, body: dict[str, Any], field: str
) -> None:
    """Setting the status, another field or nothing is a 422 naming the field."""
    (created,) = create(api, gift())
    response = api.client.patch(f"{GIFTS}/{created['id']}", json=body, headers=api.auth())
    error_of(response, 422, field)


def test_patch_of_unknown_gift_is_404(api: RegistryApp) -> None:
    """Patching an id nobody created is a 404."""
    response = api.client.patch(f"{GIFTS}/777", json={"gift_type": "x"}, headers=api.auth())
    error_of(response, 404, "id")


def test_roles_guard_the_routes(api: RegistryApp) -> None:
    """Workers read but do not write; participants do neither; no token is a 401."""
    (created,) = create(api, gift())
    url = f"{GIFTS}/{created['id']}"
    assert api.client.get(url, headers=api.auth(Role.WORKER)).status_code == 200
    error_of(api.client.post(GIFTS, json=gift(), headers=api.auth(Role.WORKER)), 403, None)
    error_of(api.client.get(url, headers=api.auth(Role.PARTICIPANT)), 403, None)
    error_of(api.client.get(url), 401, None)


def test_status_follows_the_gifts_tasks(api: RegistryApp) -> None:
    """Claiming a build task makes the gift IN_PRODUCTION; completing a wrap task WRAPPED."""
    (created,) = create(api, gift())
    url = f"{GIFTS}/{created['id']}"
    api.client.get(url, headers=api.auth())  # cached as REQUESTED
    for task_type, expected in (("build", "IN_PRODUCTION"), ("wrap", "WRAPPED")):
        task = api.client.post(
            "/api/v1/tasks",
            json={"gift_id": created["id"], "task_type": task_type},
            headers=api.auth(),
        ).json()
        claim = api.client.post(
            "/api/v1/workers/w1/claim",
            json={"task_types": [task_type]},
            headers=api.auth(Role.WORKER),
        ).json()
        (claimed,) = claim["tasks"]
        assert claimed["id"] == task["id"]
        done = api.client.post(
            f"/api/v1/tasks/{task['id']}/complete",
            json={"worker_id": "w1", "fence": claimed["fence"]},
            headers=api.auth(Role.WORKER),
        )
        assert done.status_code == 200, done.text
        eventually(lambda e=expected: api.client.get(url, headers=api.auth()).json()["status"] == e)


def test_events_reach_the_stream_through_the_outbox(api: RegistryApp) -> None:
    """A registered gift's gift.created, then its status change, arrive on the event stream."""
    (created,) = create(api, gift())
    eventually(lambda: api.stream.last_seq >= 1)
    api.service.cache.clear()
    task = api.client.post(
        "/api/v1/tasks", json={"gift_id": created["id"], "task_type": "build"}, headers=api.auth()
    ).json()
    api.client.post("/api/v1/workers/w1/claim", json={}, headers=api.auth(Role.WORKER))
    eventually(lambda: api.stream.last_seq >= 2)
    subjects = [api.stream.get(seq).subject for seq in (1, 2)]  # type: ignore[union-attr]
    assert subjects == [GIFT_CREATED, GIFT_STATUS_CHANGED]
    assert task["gift_id"] == created["id"]


def test_cache_serves_repeated_lookups(api: RegistryApp) -> None:
    """A second lookup of the same gift is a cache hit, counted on /metrics."""
    (created,) = create(api, gift())
    url = f"{GIFTS}/{created['id']}"
    api.client.get(url, headers=api.auth())
    api.client.get(url, headers=api.auth())
    assert api.metric("registry_cache_lookups_total", result="hit") == 1
    assert api.metric("registry_cache_lookups_total", result="miss") == 1
    assert api.metric("registry_gifts_created_total") == 1


def test_stats_count_gifts_per_status(api: RegistryApp) -> None:
    """/gifts/stats has every status with its count."""
    create(api, gift(), gift())
    stats = api.client.get(f"{GIFTS}/stats", headers=api.auth(Role.WORKER)).json()["by_status"]
    assert stats["REQUESTED"] == 2
    assert set(stats) == {"REQUESTED", "IN_PRODUCTION", "WRAPPED", "LOADED", "DELIVERED", "FAILED"}
