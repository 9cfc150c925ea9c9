"""HTTP tests of the exchange routes through FastAPI's TestClient: shapes, bad input, auth.

Each test gets a fresh app (Gift ID generator + exchange service on SQLite in
``tmp_path``) built with ``create_app`` the way ``northpole up`` builds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from northpole.core.auth import Role
from northpole.exchange.crypto import open_match, verify_commitment
from northpole.exchange.settings import ExchangeSettings

from exchange_service_support import (  # isort: skip
    App,
    GatedMatcher,
    People,
    build_exchange_app,
    infeasible_matcher,
    shift_matcher,
)

API = "/api/v1/exchanges"
ORGANIZER = "organizer-elf"
EXCHANGE_FIELDS = {
    "id",
    "name",
    "year",
    "region",
    "organizer",
    "rules",
    "phase",
    "participants",
    "matches",
    "created_at",
    "updated_at",
    "matching_since",
    "cost",
    "optimal",
    "commitment_root",
}


class Api:
    """A TestClient with token helpers and the people it registered."""

    def __init__(self, client: TestClient, app: App) -> None:
        self.client = client
        self.app = app
        self.people = People()
        self.org = app.headers(ORGANIZER, Role.OPERATOR)

    def me(self, pid: str) -> dict[str, str]:
        """Headers of participant ``pid``'s own token."""
        return self.app.headers(pid, Role.PARTICIPANT)

    def create(self, **body: Any) -> dict[str, Any]:
        """Create an exchange as the organizer; return its JSON."""
        body = {"name": "Workshop", "year": 2026, "region": "north", **body}
        response = self.client.post(API, json=body, headers=self.org)
        assert response.status_code == 201, response.text
        return response.json()

    def person(self, pid: str | None = None, **fields: Any) -> dict[str, Any]:
        """Return a registration body for a fresh participant (key kept in ``people``)."""
        made = self.people.make(pid)
        return {
            "id": made.id,
            "region": made.region,
            "budget": made.budget,
            "public_key": made.public_key,
            **fields,
        }

    def register(self, exchange_id: str, n: int) -> list[str]:
        """Register ``n`` participants in one batch as the organizer."""
        bodies = [self.person() for _ in range(n)]
        response = self.client.post(
            f"{API}/{exchange_id}/participants", json={"participants": bodies}, headers=self.org
        )
        assert response.status_code == 201, response.text
        return [b["id"] for b in bodies]


def client_for(tmp_path: Path, **kwargs: Any) -> Iterator[Api]:
    """Yield an Api on a fresh app built with ``kwargs``."""
    app = build_exchange_app(tmp_path, **kwargs)
    with TestClient(app.app) as client:
        yield Api(client, app)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """An API on the shift matcher."""
    yield from client_for(tmp_path, matcher=shift_matcher)


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """Check the status and the one JSON error body; return the inner error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert {"code", "message", "field"} <= set(error)
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    return error


def test_create_answers_201_with_the_exchange(api: Api) -> None:
    """POST /exchanges returns the exchange: decimal id, REGISTRATION, rules, counts."""
    body = api.create(rules={"budget_tolerance": 10, "no_reciprocal": True})
    assert set(body) == EXCHANGE_FIELDS
    assert body["id"].isdigit()
    assert (body["phase"], body["organizer"], body["participants"]) == (
        "REGISTRATION",
        ORGANIZER,
        0,
    )
    assert body["rules"]["budget_tolerance"] == 10
    assert body["rules"]["no_reciprocal"] is True
    assert body["created_at"].endswith("Z")


def test_get_returns_the_same_exchange(api: Api) -> None:
    """GET /exchanges/{id} returns what POST returned (phase and counts)."""
    created = api.create()
    got = api.client.get(f"{API}/{created['id']}", headers=api.org)
    assert got.status_code == 200
    assert got.json() == created


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "year": "2026", "region": "n"}, "year"),
        ({"name": "x", "year": 1800, "region": "n"}, "year"),
        ({"year": 2026, "region": "n"}, "name"),
        ({"name": "x", "year": 2026, "region": "n", "colour": "red"}, "colour"),
        ({"name": "x", "year": 2026, "region": "n", "rules": {"budget_tolerance": -1}}, None),
        ({"name": "x", "year": 2026, "region": "a b"}, "region"),
        ({"name": "x", "year": 2026, "region": "n", "rules": {"single_cycle": "yes"}}, None),
    ],
)
def test_bad_exchange_bodies_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str | None
) -> None:
    """Each bad field of POST /exchanges is a 422 JSON error naming it."""
    error = assert_error(api.client.post(API, json=body, headers=api.org), 422, "invalid_input")
    if field is not None:
        assert error["field"] == field
    else:
        assert error["field"].startswith("rules.")


def test_a_body_that_is_not_json_is_422_on_body(api: Api) -> None:
    """Malformed JSON is a 422 naming ``body``."""
    response = api.client.post(API, content=b"{nope", headers=api.org)
    assert_error(response, 422, "invalid_input", "body")


def test_no_token_is_401_and_a_participant_cannot_create(api: Api) -> None:
    """No token: 401 with WWW-Authenticate. A participant token: 403."""
    response = api.client.post(API, json={"name": "x", "year": 2026, "region": "n"})
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    response = api.client.post(
        API, json={"name": "x", "year": 2026, "region": "n"}, headers=api.me("p")
    )
    assert_error(response, 403, "forbidden")


def test_a_worker_token_is_refused_everywhere(api: Api) -> None:
    """The worker role has no business with exchanges: 403."""
    exchange_id = api.create()["id"]
    worker = api.app.headers("w1", Role.WORKER)
    assert_error(api.client.get(f"{API}/{exchange_id}", headers=worker), 403)
    assert_error(api.client.post(f"{API}/{exchange_id}/match", headers=worker), 403)


@pytest.mark.parametrize("exchange_id", ["999999999", "abc", "12-3"])
def test_an_unknown_exchange_is_404(api: Api, exchange_id: str) -> None:
    """Reading, registering into or matching an unknown exchange is a 404 JSON error."""
    assert_error(
        api.client.get(f"{API}/{exchange_id}", headers=api.org), 404, "exchange_not_found", "id"
    )
    response = api.client.post(
        f"{API}/{exchange_id}/participants", json=api.person(), headers=api.org
    )
    assert_error(response, 404, "exchange_not_found")
    assert_error(api.client.post(f"{API}/{exchange_id}/match", headers=api.org), 404)


def test_one_registration_returns_the_participant(api: Api) -> None:
    """POST one participant: 201 with the stored record; the count goes up."""
    exchange_id = api.create()["id"]
    body = api.person(group="household-1", budget=25)
    response = api.client.post(f"{API}/{exchange_id}/participants", json=body, headers=api.org)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored == {**body, "budget": 25.0, "exclusions": [], "preferences": []}
    assert api.client.get(f"{API}/{exchange_id}", headers=api.org).json()["participants"] == 1


def test_a_participant_registers_themselves_with_their_own_token(api: Api) -> None:
    """A participant token registers its own id; another id is 403."""
    exchange_id = api.create()["id"]
    mine = api.person()
    url = f"{API}/{exchange_id}/participants"
    assert api.client.post(url, json=mine, headers=api.me(mine["id"])).status_code == 201
    assert_error(api.client.post(url, json=api.person(), headers=api.me(mine["id"])), 403)


def test_many_registrations_are_all_or_nothing(api: Api) -> None:
    """A batch with one malformed key stores nobody and names the culprit's field."""
    exchange_id = api.create()["id"]
    bodies = [api.person(), api.person(public_key="c2hvcnQ="), api.person()]
    response = api.client.post(
        f"{API}/{exchange_id}/participants", json={"participants": bodies}, headers=api.org
    )
    assert_error(response, 422, "invalid_input", "participants.1.public_key")
    assert api.client.get(f"{API}/{exchange_id}", headers=api.org).json()["participants"] == 0
    ids = api.register(exchange_id, 3)
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"budget": -5}, "budget"),
        ({"budget": 0}, "budget"),
        ({"budget": "20"}, "budget"),
        ({"budget": True}, "budget"),
        ({"public_key": "!!!"}, "public_key"),
        ({"public_key": "QUFBQQ=="}, "public_key"),
        ({"exclusions": ["nobody-by-that-name"]}, "exclusions"),
        ({"preferences": ["nobody-by-that-name"]}, "preferences"),
        ({"exclusions": "not-a-list"}, "exclusions"),
        ({"id": ""}, "id"),
        ({"id": "white space"}, "id"),
        ({"region": None}, "region"),
        ({"shoe_size": 42}, "shoe_size"),
    ],
)
def test_bad_participants_are_4xx_naming_the_field(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    """Bad budgets, keys, references, ids and unknown fields: 422 naming the field."""
    exchange_id = api.create()["id"]
    response = api.client.post(
        f"{API}/{exchange_id}/participants", json=api.person(**fields), headers=api.org
    )
    assert_error(response, 422, field=field)


def test_a_duplicate_id_is_409_naming_id(api: Api) -> None:
    """Registering an id twice: 409 on ``id``; twice in one batch: 422 on its position."""
    exchange_id = api.create()["id"]
    body = api.person()
    url = f"{API}/{exchange_id}/participants"
    assert api.client.post(url, json=body, headers=api.org).status_code == 201
    assert_error(api.client.post(url, json=body, headers=api.org), 409, "conflict", "id")
    twice = api.person()
    response = api.client.post(url, json={"participants": [twice, twice]}, headers=api.org)
    assert_error(response, 422, field="participants.1.id")


def test_too_many_participants_is_422(tmp_path: Path) -> None:
    """More than ``max_participants``: 422 naming ``participants``."""
    for api in client_for(tmp_path, settings=ExchangeSettings(max_participants=3)):
        exchange_id = api.create()["id"]
        bodies = [api.person() for _ in range(4)]
        response = api.client.post(
            f"{API}/{exchange_id}/participants", json={"participants": bodies}, headers=api.org
        )
        assert_error(response, 422, field="participants")


def test_an_empty_batch_is_422(api: Api) -> None:
    """``{"participants": []}`` is refused."""
    exchange_id = api.create()["id"]
    response = api.client.post(
        f"{API}/{exchange_id}/participants", json={"participants": []}, headers=api.org
    )
    assert_error(response, 422, field="participants")


def test_patch_changes_a_registration(api: Api) -> None:
    """PATCH changes the given fields; the participant reads the result with their token."""
    exchange_id = api.create()["id"]
    a, b = api.register(exchange_id, 2)
    url = f"{API}/{exchange_id}/participants/{a}"
    response = api.client.patch(
        url, json={"budget": 40, "exclusions": [b], "group": "elves"}, headers=api.me(a)
    )
    assert response.status_code == 200, response.text
    assert (response.json()["budget"], response.json()["exclusions"]) == (40.0, [b])
    assert api.client.get(url, headers=api.me(a)).json()["group"] == "elves"
    assert api.client.patch(url, json={"group": None}, headers=api.me(a)).json()["group"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget": None}, "budget"),
        ({"budget": -1}, "budget"),
        ({}, "body"),
        ({"id": "renamed"}, "id"),
        ({"public_key": "short"}, "public_key"),
        ({"exclusions": ["ghost"]}, "exclusions"),
    ],
)
def test_bad_patches_are_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    """Nulls, bad values, unknown references, renames and empty patches are 422."""
    exchange_id = api.create()["id"]
    [a] = api.register(exchange_id, 1)
    response = api.client.patch(f"{API}/{exchange_id}/participants/{a}", json=body, headers=api.org)
    assert_error(response, 422, field=field)


def test_participants_cannot_touch_each_other(api: Api) -> None:
    """Another participant's token may not patch, delete or read someone's registration."""
    exchange_id = api.create()["id"]
    a, b = api.register(exchange_id, 2)
    url = f"{API}/{exchange_id}/participants/{a}"
    assert_error(api.client.patch(url, json={"budget": 1}, headers=api.me(b)), 403)
    assert_error(api.client.delete(url, headers=api.me(b)), 403)
    assert_error(api.client.get(url, headers=api.me(b)), 403)
    assert_error(api.client.get(url, headers=api.org), 403)


def test_delete_withdraws_a_registration(api: Api) -> None:
    """DELETE answers 204; the participant is gone (404) and the count drops."""
    exchange_id = api.create()["id"]
    a, _ = api.register(exchange_id, 2)
    url = f"{API}/{exchange_id}/participants/{a}"
    response = api.client.delete(url, headers=api.me(a))
    assert response.status_code == 204
    assert_error(api.client.get(url, headers=api.me(a)), 404, "participant_not_found")
    assert api.client.get(f"{API}/{exchange_id}", headers=api.org).json()["participants"] == 1


def test_a_malformed_participant_id_in_the_path_is_422(api: Api) -> None:
    """A path id with characters ids may not have is 422 on ``participant_id``."""
    exchange_id = api.create()["id"]
    response = api.client.delete(f"{API}/{exchange_id}/participants/a%20b", headers=api.org)
    assert_error(response, 422, field="participant_id")


def test_match_commits_and_answers_only_counts(api: Api) -> None:
    """POST match: COMMITTED with counts and root; no participant id appears in the answer."""
    exchange_id = api.create()["id"]
    ids = api.register(exchange_id, 4)
    response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["phase"], body["participants"], body["matches"]) == ("COMMITTED", 4, 4)
    assert len(body["commitment_root"]) == 64
    assert not any(pid in response.text for pid in ids)


def test_a_second_match_is_409(api: Api) -> None:
    """Matching a COMMITTED exchange is 409 ``wrong_phase``."""
    exchange_id = api.create()["id"]
    api.register(exchange_id, 3)
    assert api.client.post(f"{API}/{exchange_id}/match", headers=api.org).status_code == 200
    response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    assert_error(response, 409, "wrong_phase", "phase")


def test_match_needs_the_organizer(api: Api) -> None:
    """A participant, or an operator who did not create it, gets 403."""
    exchange_id = api.create()["id"]
    [a, *_] = api.register(exchange_id, 3)
    assert_error(api.client.post(f"{API}/{exchange_id}/match", headers=api.me(a)), 403)
    other = api.app.headers("another-elf", Role.OPERATOR)
    assert_error(api.client.post(f"{API}/{exchange_id}/match", headers=other), 403)


def test_infeasible_is_422_with_the_explanation(tmp_path: Path) -> None:
    """An infeasible exchange answers 422 with ``error.details`` and stays in REGISTRATION."""
    for api in client_for(tmp_path, matcher=infeasible_matcher):
        exchange_id = api.create()["id"]
        ids = api.register(exchange_id, 3)
        response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
        error = assert_error(response, 422, "infeasible", "participants")
        assert error["details"]["kind"] == "hall"
        assert error["details"]["givers"] == [min(ids)]
        phase = api.client.get(f"{API}/{exchange_id}", headers=api.org).json()["phase"]
        assert phase == "REGISTRATION"


def post_match(api: Api, exchange_id: str, answers: list[httpx.Response]) -> None:
    """POST match as the organizer and keep the answer."""
    answers.append(api.client.post(f"{API}/{exchange_id}/match", headers=api.org))


def test_a_concurrent_match_is_409_while_the_first_solves(tmp_path: Path) -> None:
    """While one match request solves, another gets 409 (MATCHING) and GET still answers."""
    gate = GatedMatcher()
    for api in client_for(tmp_path, matcher=gate):
        exchange_id = api.create()["id"]
        api.register(exchange_id, 3)
        answers: list[httpx.Response] = []
        first = threading.Thread(target=post_match, args=(api, exchange_id, answers))
        first.start()
        try:
            assert gate.entered.wait(10)
            response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
            assert_error(response, 409, "wrong_phase")
            state = api.client.get(f"{API}/{exchange_id}", headers=api.org).json()
            assert state["phase"] == "MATCHING"
        finally:
            gate.release.set()
            first.join(30)
        assert answers[0].status_code == 200
        assert answers[0].json()["phase"] == "COMMITTED"


def test_a_participant_fetches_and_opens_their_sealed_match(api: Api) -> None:
    """GET matches/{pid} with one's own token: a sealed box one's key opens, and it verifies."""
    exchange_id = api.create()["id"]
    ids = api.register(exchange_id, 3)
    api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    pid = ids[0]
    response = api.client.get(f"{API}/{exchange_id}/matches/{pid}", headers=api.me(pid))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "exchange_id",
        "participant_id",
        "format",
        "sealed",
        "commitment",
        "commitment_root",
    }
    revealed = open_match(body["sealed"], api.people.keys[pid])
    assert revealed.receiver in ids and revealed.receiver != pid
    assert verify_commitment(revealed, body["commitment"])
    assert revealed.receiver not in response.text


def test_nobody_else_gets_a_participants_match(api: Api) -> None:
    """The organizer, an admin and other participants get 403; no token gets 401."""
    exchange_id = api.create()["id"]
    a, b, _ = api.register(exchange_id, 3)
    api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    url = f"{API}/{exchange_id}/matches/{a}"
    for headers in (api.org, api.app.headers("santa", Role.ADMIN), api.me(b)):
        assert_error(api.client.get(url, headers=headers), 403, "forbidden")
    assert_error(api.client.get(url), 401)


def test_a_match_before_commit_is_409(api: Api) -> None:
    """Asking for one's match during REGISTRATION is 409."""
    exchange_id = api.create()["id"]
    [a, *_] = api.register(exchange_id, 2)
    response = api.client.get(f"{API}/{exchange_id}/matches/{a}", headers=api.me(a))
    assert_error(response, 409, "wrong_phase")


def test_commitments_are_listed_for_audit(api: Api) -> None:
    """GET commitments: one per giver, no receivers, readable by a participant."""
    exchange_id = api.create()["id"]
    ids = api.register(exchange_id, 3)
    api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    response = api.client.get(f"{API}/{exchange_id}/commitments", headers=api.me(ids[1]))
    assert response.status_code == 200, response.text
    listed = response.json()["commitments"]
    assert sorted(c["giver"] for c in listed) == sorted(ids)
    assert all(set(c) == {"giver", "commitment"} for c in listed)


def test_cancel_ends_the_exchange(api: Api) -> None:
    """POST cancel: CANCELLED; then registration and a second cancel are 409."""
    exchange_id = api.create()["id"]
    response = api.client.post(f"{API}/{exchange_id}/cancel", headers=api.org)
    assert response.json()["phase"] == "CANCELLED"
    assert_error(api.client.post(f"{API}/{exchange_id}/cancel", headers=api.org), 409)
    response = api.client.post(
        f"{API}/{exchange_id}/participants", json=api.person(), headers=api.org
    )
    assert_error(response, 409, "wrong_phase")


def test_metrics_expose_the_matching_histogram(api: Api) -> None:
    """/metrics shows matching_duration_seconds by region and no participant ids."""
    exchange_id = api.create(region="lapland")["id"]
    ids = api.register(exchange_id, 3)
    api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
    text = api.client.get("/metrics").text
    assert 'matching_duration_seconds_count{region="lapland"} 1.0' in text
    assert 'exchange_exchanges{phase="COMMITTED"} 1.0' in text
    assert not any(pid in text for pid in ids)


def test_readiness_includes_the_exchange_part(api: Api) -> None:
    """/readyz reports the exchange part ready while its store is open."""
    body = api.client.get("/readyz").json()
    assert body["parts"]["exchange"] == {"ready": True, "detail": "ok"}


def test_a_left_out_budget_tolerance_takes_the_configured_default(tmp_path: Path) -> None:
    """Rules without ``budget_tolerance`` get ``default_budget_tolerance``; an explicit null not."""
    for api in client_for(tmp_path, settings=ExchangeSettings(default_budget_tolerance=5)):
        assert api.create()["rules"]["budget_tolerance"] == 5
        assert api.create(rules={"no_reciprocal": True})["rules"]["budget_tolerance"] == 5
        explicit = api.create(rules={"budget_tolerance": None})
        assert explicit["rules"]["budget_tolerance"] is None


def test_the_real_matcher_explains_an_infeasible_exchange(tmp_path: Path) -> None:
    """With the real matcher, a giver who excludes every other person makes a 422 naming them."""
    for api in client_for(tmp_path):
        exchange_id = api.create()["id"]
        others = api.register(exchange_id, 3)
        picky = api.person(exclusions=others)
        url = f"{API}/{exchange_id}/participants"
        assert api.client.post(url, json=picky, headers=api.org).status_code == 201
        response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
        error = assert_error(response, 422, "infeasible")
        assert picky["id"] in error["details"]["givers"]
        assert api.client.get(f"{API}/{exchange_id}", headers=api.org).json()["phase"] == (
            "REGISTRATION"
        )
        fixed = api.client.patch(
            f"{url}/{picky['id']}", json={"exclusions": others[:1]}, headers=api.org
        )
        assert fixed.status_code == 200
        response = api.client.post(f"{API}/{exchange_id}/match", headers=api.org)
        assert response.json()["phase"] == "COMMITTED"


def test_the_real_matcher_respects_households(tmp_path: Path) -> None:
    """Members of one group never give to each other (checked by opening every box)."""
    for api in client_for(tmp_path):
        exchange_id = api.create()["id"]
        bodies = [api.person(group=f"house-{i % 3}") for i in range(9)]
        url = f"{API}/{exchange_id}/participants"
        response = api.client.post(url, json={"participants": bodies}, headers=api.org)
        assert response.status_code == 201
        assert api.client.post(f"{API}/{exchange_id}/match", headers=api.org).status_code == 200
        group = {b["id"]: b["group"] for b in bodies}
        for body in bodies:
            pid = body["id"]
            got = api.client.get(f"{API}/{exchange_id}/matches/{pid}", headers=api.me(pid))
            receiver = open_match(got.json()["sealed"], api.people.keys[pid]).receiver
            assert group[receiver] != group[pid]
