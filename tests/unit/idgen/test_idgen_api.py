"""HTTP tests of the Gift ID service and the operations routes, through FastAPI's TestClient."""

from __future__ import annotations

import gzip
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.clock import FakeClock
from northpole.core.errors import WorkshopIdUnavailable
from northpole.core.settings import (
    DEFAULT_EPOCH_MS,
    AuthSettings,
    HttpSettings,
    IdGenSettings,
    Settings,
)
from northpole.idgen.snowflake import MAX_ID, MAX_TIMESTAMP, decode
from northpole.system import build_app

START_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z: tokens and IDs use this fake time.
WORKSHOP_ID = 3
SECRET = "api-test-secret-0123456789abcdef0123456789abcdef"
BODY_LIMIT = 1024
GENERATE = "/api/v1/gift-id/generate"
HEALTH = "/api/v1/gift-id/health"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def make_settings(data_dir: Path, *, workshop_id: int = WORKSHOP_ID) -> Settings:
    """Return settings with a fixed secret, the smallest body limit and the given workshop id."""
    return Settings(
        data_dir=data_dir,
        auth=AuthSettings(secret=SecretStr(SECRET)),
        http=HttpSettings(max_body_bytes=BODY_LIMIT),
        idgen=IdGenSettings(workshop_id=workshop_id),
    )


def bearer(
    settings: Settings, clock: FakeClock, role: Role | str = Role.OPERATOR, ttl_s: int = 3600
) -> dict[str, str]:
    """Return an Authorization header carrying a fresh token for ``role``."""
    tokens = TokenService(load_secret(settings), settings.auth, clock=clock)
    return {"Authorization": f"Bearer {tokens.issue(sub='tester', role=role, ttl_s=ttl_s)}"}


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
    assert error["code"] == code
    assert error["field"] == field
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def metric(text: str, name: str, **labels: str) -> float:
    """Return the value of the first sample called ``name`` whose labels include ``labels``."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels} in /metrics")


@dataclass
class Api:
    """A running app with its fake clock and settings."""

    client: TestClient
    clock: FakeClock
    settings: Settings

    def auth(self, role: Role | str = Role.OPERATOR, ttl_s: int = 3600) -> dict[str, str]:
        """Return an Authorization header for ``role`` issued at the app's clock."""
        return bearer(self.settings, self.clock, role, ttl_s)

    def generate(self, count: int | None = None) -> list[int]:
        """Generate IDs as an operator and return them as integers."""
        body = None if count is None else {"count": count}
        response = self.client.post(GENERATE, json=body, headers=self.auth())
        assert response.status_code == 200, response.text
        return [int(x) for x in response.json()["ids"]]

    def metrics(self) -> str:
        """Return the /metrics text."""
        response = self.client.get("/metrics")
        assert response.status_code == 200
        return response.text


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A started idgen app on a fresh data directory, driven by a FakeClock."""
    settings = make_settings(tmp_path)
    clock = FakeClock(START_MS)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock)) as client:
        yield Api(client, clock, settings)


# -- POST /api/v1/gift-id/generate: bodies -------------------------------------------


def test_generate_without_body_returns_one_id(api: Api) -> None:
    """A POST with no body returns exactly one decimal-string id for this workshop and time."""
    response = api.client.post(GENERATE, headers=api.auth())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    ids = response.json()["ids"]
    assert len(ids) == 1
    assert isinstance(ids[0], str)
    assert ids[0].isdigit()
    parts = decode(int(ids[0]))
    assert parts.workshop_id == WORKSHOP_ID
    assert parts.unix_ms == START_MS


@pytest.mark.parametrize("count", [1, 2, 4096])
def test_generate_count_returns_unique_increasing_ids(api: Api, count: int) -> None:
    """``{"count": n}`` returns n unique, strictly increasing decimal ids of this workshop."""
    response = api.client.post(GENERATE, json={"count": count}, headers=api.auth())
    assert response.status_code == 200
    raw = response.json()["ids"]
    assert len(raw) == count
    assert all(isinstance(x, str) and x.isdigit() for x in raw)
    ids = [int(x) for x in raw]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == count
    assert {decode(i).workshop_id for i in ids} == {WORKSHOP_ID}


def test_generate_successive_calls_keep_increasing(api: Api) -> None:
    """Ids from later calls are all greater than ids from earlier calls, across milliseconds."""
    first = api.generate(4096)
    second = api.generate(10)
    api.clock.advance(1)
    third = api.generate()
    assert max(first) < min(second)
    assert max(second) < min(third)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{bad json", "body"),
        (b'{"count": 1', "body"),
        (b'{"count": 0}', "count"),
        (b'{"count": 4097}', "count"),
        (b'{"count": -1}', "count"),
        (b'{"count": "abc"}', "count"),
        (b'{"count": "5"}', "count"),
        (b'{"count": true}', "count"),
        (b'{"count": 1.5}', "count"),
        (b'{"count": 1.0}', "count"),
        (b'{"count": null}', "count"),
        (b"[1]", "body"),
        (b"5", "body"),
        (b"null", "body"),
        (b'"count"', "body"),
        (b'{"count": 1, "extra": 1}', "extra"),
    ],
)
def test_generate_rejects_bad_body_naming_the_field(api: Api, body: bytes, field: str) -> None:
    """A malformed or out-of-range body is a 422 invalid_input naming the offending field."""
    response = api.client.post(
        GENERATE, content=body, headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_input", field)


def test_generate_rejects_body_over_limit_by_content_length(api: Api) -> None:
    """A body one byte over http.max_body_bytes is refused with 413 payload_too_large."""
    body = b'{"count": 1}'.ljust(BODY_LIMIT + 1)
    response = api.client.post(GENERATE, content=body, headers=api.auth())
    error = assert_error(response, 413, "payload_too_large", "body")
    assert str(BODY_LIMIT) in error["message"]


def test_generate_rejects_streamed_body_over_limit(api: Api) -> None:
    """A chunked body without Content-Length is cut off at the limit with a 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"count": 1}'
        yield b" " * BODY_LIMIT

    response = api.client.post(GENERATE, content=chunks(), headers=api.auth())
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large", "body")


def test_generate_accepts_body_exactly_at_limit(api: Api) -> None:
    """A body of exactly http.max_body_bytes bytes is accepted."""
    body = b'{"count": 2}'.ljust(BODY_LIMIT)
    assert len(body) == BODY_LIMIT
    response = api.client.post(GENERATE, content=body, headers=api.auth())
    assert response.status_code == 200
    assert len(response.json()["ids"]) == 2


def test_generate_accepts_json_without_content_type(api: Api) -> None:
    """A JSON body sent with no Content-Type header is still read."""
    response = api.client.post(GENERATE, content=b'{"count": 3}', headers=api.auth())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200
    assert len(response.json()["ids"]) == 3


def test_generate_accepts_json_sent_as_text_plain(api: Api) -> None:
    """A JSON body labelled text/plain is still read."""
    response = api.client.post(
        GENERATE, content=b'{"count": 4}', headers={**api.auth(), "Content-Type": "text/plain"}
    )
    assert response.status_code == 200
    assert len(response.json()["ids"]) == 4


def test_generate_whitespace_only_body_means_one_id(api: Api) -> None:
    """A body of only whitespace counts as no body and yields one id."""
    response = api.client.post(GENERATE, content=b"  \n", headers=api.auth())
    assert response.status_code == 200
    assert len(response.json()["ids"]) == 1


# -- POST /api/v1/gift-id/generate: authentication and roles --------------------------


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.WORKER, Role.ADMIN])
def test_generate_admits_operator_worker_and_admin(api: Api, role: Role) -> None:
    """Operator, worker and admin tokens may generate ids."""
    response = api.client.post(GENERATE, headers=api.auth(role))
    assert response.status_code == 200
    assert len(response.json()["ids"]) == 1


def test_generate_forbids_participant(api: Api) -> None:
    """A valid participant token gets 403 forbidden."""
    response = api.client.post(GENERATE, headers=api.auth(Role.PARTICIPANT))
    error = assert_error(response, 403, "forbidden", None)
    assert "participant" in error["message"]
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": "Basic x"},
        {"Authorization": "Token abc"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer a.b.c"},
    ],
    ids=["none", "bearer-empty", "bearer-blank", "basic", "other-scheme", "garbage", "bad-jwt"],
)
def test_generate_without_usable_token_is_unauthenticated(
    api: Api, headers: dict[str, str]
) -> None:
    """A missing or malformed Authorization header gets 401 with WWW-Authenticate: Bearer."""
    response = api.client.post(GENERATE, headers=headers)
    assert_error(response, 401, "unauthenticated", None)
    assert response.headers["www-authenticate"] == "Bearer"


def test_generate_rejects_token_signed_with_another_secret(api: Api) -> None:
    """A well-formed token signed with a different secret gets 401."""
    other = TokenService(b"another-secret-0123456789abcdef0123", api.settings.auth, clock=api.clock)
    token = other.issue(sub="mallory", role=Role.ADMIN)
    response = api.client.post(GENERATE, headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "unauthenticated", None)
    assert response.headers["www-authenticate"] == "Bearer"


def test_generate_rejects_expired_token(api: Api) -> None:
    """A token is accepted until its expiry plus leeway and refused with 401 after it."""
    headers = api.auth(ttl_s=60)
    assert api.client.post(GENERATE, headers=headers).status_code == 200
    api.clock.advance((60 + api.settings.auth.leeway_s + 1) * 1000)
    response = api.client.post(GENERATE, headers=headers)
    error = assert_error(response, 401, "unauthenticated", None)
    assert "expired" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "auth", [AuthSettings(audience="elsewhere"), AuthSettings(issuer="someone-else")]
)
def test_generate_rejects_token_for_other_audience_or_issuer(api: Api, auth: AuthSettings) -> None:
    """A token signed with the right secret but the wrong audience or issuer gets 401."""
    token = TokenService(SECRET.encode(), auth, clock=api.clock).issue(sub="x", role=Role.ADMIN)
    response = api.client.post(GENERATE, headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "unauthenticated", None)
    assert response.headers["www-authenticate"] == "Bearer"


def test_generate_checks_token_before_body(api: Api) -> None:
    """An unauthenticated request with a bad body is a 401, not a 422."""
    response = api.client.post(GENERATE, content=b'{"count": 0}')
    assert_error(response, 401, "unauthenticated", None)


# -- GET /api/v1/gift-id/{id}/decode ----------------------------------------------------


def test_decode_round_trips_a_generated_id(api: Api) -> None:
    """Decoding a generated id returns its timestamp, unix_ms, workshop id and sequence."""
    ids = api.generate(3)
    response = api.client.get(f"/api/v1/gift-id/{ids[1]}/decode", headers=api.auth())
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "id": str(ids[1]),
        "timestamp": "2026-01-01T00:00:00.123Z",
        "unix_ms": START_MS,
        "workshop_id": WORKSHOP_ID,
        "sequence": 1,
    }
    assert RFC3339_MS.match(body["timestamp"])


@pytest.mark.parametrize("raw", ["abc", "-1", "9223372036854775808", "1.5", "1e3", "0x10", "+1"])
def test_decode_rejects_non_ids(api: Api, raw: str) -> None:
    """Anything but a decimal integer from 0 to 2**63-1 is a 422 naming ``id``."""
    response = api.client.get(f"/api/v1/gift-id/{raw}/decode", headers=api.auth())
    assert_error(response, 422, "invalid_input", "id")


def test_decode_accepts_the_largest_id(api: Api) -> None:
    """2**63-1 decodes to the last millisecond, workshop 1023 and sequence 4095."""
    response = api.client.get(f"/api/v1/gift-id/{MAX_ID}/decode", headers=api.auth())
    assert response.status_code == 200
    assert response.json() == {
        "id": "9223372036854775807",
        "timestamp": "2094-09-07T15:47:35.551Z",
        "unix_ms": DEFAULT_EPOCH_MS + MAX_TIMESTAMP,
        "workshop_id": 1023,
        "sequence": 4095,
    }


def test_decode_zero_is_the_epoch(api: Api) -> None:
    """Id 0 decodes to the epoch itself."""
    response = api.client.get("/api/v1/gift-id/0/decode", headers=api.auth())
    assert response.status_code == 200
    assert response.json()["timestamp"] == "2025-01-01T00:00:00.000Z"


@pytest.mark.parametrize("role", list(Role))
def test_decode_accepts_any_role(api: Api, role: Role) -> None:
    """Every role's token may decode ids."""
    response = api.client.get("/api/v1/gift-id/4096/decode", headers=api.auth(role))
    assert response.status_code == 200
    assert response.json()["workshop_id"] == 1


def test_decode_needs_a_token(api: Api) -> None:
    """Decoding without a token is a 401."""
    response = api.client.get("/api/v1/gift-id/1/decode")
    assert_error(response, 401, "unauthenticated", None)
    assert response.headers["www-authenticate"] == "Bearer"


# -- GET /api/v1/gift-id/health -------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_health_reports_status_and_workshop(api: Api, role: Role) -> None:
    """Health says ok, the workshop id, that settings assigned it, the epoch and no lag."""
    response = api.client.get(HEALTH, headers=api.auth(role))
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "workshop_id": WORKSHOP_ID,
        "assigned_by": "settings",
        "epoch_ms": DEFAULT_EPOCH_MS,
        "clock_behind_ms": 0,
    }


def test_health_needs_a_token(api: Api) -> None:
    """Generator health without a token is a 401."""
    response = api.client.get(HEALTH)
    assert_error(response, 401, "unauthenticated", None)


# -- operations routes --------------------------------------------------------------------


def test_healthz_is_ok_without_token(api: Api) -> None:
    """/healthz answers 200 {"status": "ok"} without authentication."""
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_with_parts(api: Api) -> None:
    """/readyz answers 200 and lists the idgen part as ready."""
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "parts": {"idgen": {"ready": True, "detail": "ok"}},
    }


def test_metrics_count_generated_ids_and_requests(api: Api) -> None:
    """/metrics grows gift_id_generated_total by the ids issued and labels requests by route."""
    before = api.metrics()
    assert "text/plain" in api.client.get("/metrics").headers["content-type"]
    generated_before = metric(before, "gift_id_generated_total")
    api.generate(7)
    api.generate()
    after = api.metrics()
    assert metric(after, "gift_id_generated_total") == generated_before + 8
    assert metric(after, "gift_id_collisions_total") == 0
    assert metric(after, "gift_id_workshop_id", source="settings") == WORKSHOP_ID
    labels = {"method": "POST", "route": GENERATE}
    assert metric(after, "http_request_duration_seconds_count", **labels) == 2
    assert metric(after, "http_requests_total", status="200", **labels) == 2
    assert 'route="/api/v1/gift-id/generate"' in after


def test_metrics_label_decode_by_route_template(api: Api) -> None:
    """Requests to /{id}/decode are labelled with the template, not the concrete id."""
    api.client.get("/api/v1/gift-id/12345/decode", headers=api.auth())
    text = api.metrics()
    labels = {"method": "GET", "route": "/api/v1/gift-id/{id}/decode"}
    assert metric(text, "http_request_duration_seconds_count", **labels) == 1
    assert "12345" not in text


def test_unknown_route_is_json_404(api: Api) -> None:
    """An unknown path gets 404 with the JSON error body and code not_found."""
    response = api.client.get("/no/such/route")
    assert_error(response, 404, "not_found", None)


def test_wrong_method_is_json_405(api: Api) -> None:
    """A known path with the wrong method gets 405 method_not_allowed and an Allow header."""
    response = api.client.get(GENERATE, headers=api.auth())
    assert_error(response, 405, "method_not_allowed", None)
    assert response.headers["allow"] == "POST"
    response = api.client.delete("/healthz")
    assert_error(response, 405, "method_not_allowed", None)


def test_openapi_document_lists_gift_id_routes(api: Api) -> None:
    """The OpenAPI document builds and lists the three Gift ID routes."""
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {GENERATE, "/api/v1/gift-id/{id}/decode", HEALTH} <= set(paths)


# -- request ids --------------------------------------------------------------------------


def test_request_id_is_generated_when_not_given(api: Api) -> None:
    """Every response, errors included, carries a fresh 32-hex x-request-id."""
    first = api.client.get("/healthz").headers["x-request-id"]
    second = api.client.post(GENERATE).headers["x-request-id"]
    assert HEX32.match(first)
    assert HEX32.match(second)
    assert first != second


def test_request_id_echoes_traceparent_trace_id(api: Api) -> None:
    """A W3C traceparent's trace id becomes the x-request-id, even over an X-Request-ID."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01", "X-Request-ID": "other"}
    response = api.client.post(GENERATE, headers={**headers, **api.auth()})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == trace_id


def test_request_id_echoes_safe_x_request_id(api: Api) -> None:
    """A safe X-Request-ID is echoed back unchanged."""
    response = api.client.get("/healthz", headers={"X-Request-ID": "req-42.A_b"})
    assert response.headers["x-request-id"] == "req-42.A_b"


@pytest.mark.parametrize("given", [b"has space", b"x" * 65, b"semi;colon", "ünïcode".encode()])
def test_request_id_replaces_unsafe_x_request_id(api: Api, given: bytes) -> None:
    """An unsafe or overlong X-Request-ID is replaced by a generated id."""
    response = api.client.get("/healthz", headers={"X-Request-ID": given})
    assert HEX32.match(response.headers["x-request-id"])


def test_malformed_traceparent_falls_back_to_generated_id(api: Api) -> None:
    """A traceparent that is not W3C-shaped is ignored."""
    response = api.client.get("/healthz", headers={"traceparent": "00-XYZ-b7ad6b7169203331-01"})
    assert HEX32.match(response.headers["x-request-id"])


# -- clock moving backwards -------------------------------------------------------------


def test_clock_backwards_beyond_tolerance_refuses_until_it_catches_up(api: Api) -> None:
    """A clock 5 s behind gives 503 clock_moved_backwards with Retry-After until it is back."""
    first = api.generate()
    refused_before = metric(api.metrics(), "gift_id_clock_backwards_total", outcome="refused")
    api.clock.advance(-5000)
    response = api.client.post(GENERATE, headers=api.auth())
    assert_error(response, 503, "clock_moved_backwards", None)
    assert response.headers["retry-after"] == "5"
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["parts"]["idgen"]["ready"] is False
    health = api.client.get(HEALTH, headers=api.auth())
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["clock_behind_ms"] == 5000
    refused_after = metric(api.metrics(), "gift_id_clock_backwards_total", outcome="refused")
    assert refused_after == refused_before + 1
    api.clock.advance(5001)
    later = api.generate()
    assert later[0] > first[0]
    assert api.client.get("/readyz").status_code == 200


def test_clock_backwards_within_tolerance_is_waited_out(api: Api) -> None:
    """A clock a few ms behind is waited out: 200, a larger id, and a 'waited' count."""
    first = api.generate()
    api.clock.advance(-5)
    second = api.generate()
    assert second[0] > first[0]
    assert 5 in api.clock.sleeps
    assert metric(api.metrics(), "gift_id_clock_backwards_total", outcome="waited") == 1
    assert metric(api.metrics(), "gift_id_clock_backwards_total", outcome="refused") == 0


# -- workshop id locking and restarts ---------------------------------------------------


def test_second_app_on_same_workshop_id_fails_to_start(api: Api, tmp_path: Path) -> None:
    """While one app holds a workshop id, another on the same data dir cannot start with it."""
    second = build_app(make_settings(tmp_path), parts=["idgen"], clock=FakeClock(START_MS))
    with pytest.raises(WorkshopIdUnavailable) as caught, TestClient(second):
        pytest.fail("the second app must not start")
    assert f"pid {os.getpid()}" in caught.value.message
    assert caught.value.field == "workshop_id"
    assert api.client.get("/readyz").status_code == 200


def test_second_app_with_other_workshop_id_starts(api: Api, tmp_path: Path) -> None:
    """Another workshop id on the same data dir starts and issues ids with its own id."""
    settings = make_settings(tmp_path, workshop_id=WORKSHOP_ID + 1)
    clock = FakeClock(START_MS)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock)) as other:
        assert other.get("/readyz").status_code == 200
        response = other.post(GENERATE, headers=bearer(settings, clock))
        assert decode(int(response.json()["ids"][0])).workshop_id == WORKSHOP_ID + 1
    assert decode(api.generate()[0]).workshop_id == WORKSHOP_ID


def test_workshop_id_is_free_again_after_shutdown(tmp_path: Path) -> None:
    """Once the first app stops, a new app can take the same workshop id."""
    settings = make_settings(tmp_path)
    with TestClient(build_app(settings, parts=["idgen"], clock=FakeClock(START_MS))):
        pass
    with TestClient(build_app(settings, parts=["idgen"], clock=FakeClock(START_MS + 5000))) as c:
        assert c.get("/readyz").status_code == 200


def _generate_with(client: TestClient, settings: Settings, clock: FakeClock, count: int) -> Any:
    return client.post(GENERATE, json={"count": count}, headers=bearer(settings, clock))


def test_restart_with_clock_an_hour_back_refuses_then_resumes_above_old_ids(
    tmp_path: Path,
) -> None:
    """A restart with the clock an hour back is not ready and refuses ids until past the mark."""
    settings = make_settings(tmp_path)
    clock_a = FakeClock(START_MS)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock_a)) as app_a:
        old = [int(x) for x in _generate_with(app_a, settings, clock_a, 10).json()["ids"]]

    clock_b = FakeClock(START_MS - 3_600_000)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock_b)) as app_b:
        ready = app_b.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        response = _generate_with(app_b, settings, clock_b, 1)
        assert_error(response, 503, "clock_moved_backwards", None)
        assert int(response.headers["retry-after"]) >= 3600
        clock_b.set_ms(START_MS + settings.idgen.reserve_ms + 1)
        response = _generate_with(app_b, settings, clock_b, 5)
        assert response.status_code == 200
        new = [int(x) for x in response.json()["ids"]]
        assert min(new) > max(old)
        assert app_b.get("/readyz").status_code == 200


def test_restart_inside_reservation_waits_at_startup(tmp_path: Path) -> None:
    """A restart whose clock is only slightly behind the stored mark waits it out and is ready."""
    settings = make_settings(tmp_path)
    clock_a = FakeClock(START_MS)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock_a)) as app_a:
        old = [int(x) for x in _generate_with(app_a, settings, clock_a, 3).json()["ids"]]

    clock_b = FakeClock(START_MS + 200)
    with TestClient(build_app(settings, parts=["idgen"], clock=clock_b)) as app_b:
        assert clock_b.sleeps == [settings.idgen.reserve_ms - 200]
        assert app_b.get("/readyz").status_code == 200
        new = [int(x) for x in _generate_with(app_b, settings, clock_b, 3).json()["ids"]]
        assert min(new) > max(old)


@pytest.mark.parametrize(("level", "xfl"), [(1, 4), (6, 0), (9, 2)])
def test_the_gzip_level_is_the_setting(tmp_path: Path, level: int, xfl: int) -> None:
    """Answers are compressed at ``http.gzip_level`` (the gzip header's XFL byte says
    fastest for 1, best for 9), and still decode to the same ids."""
    base = make_settings(tmp_path)
    settings = base.model_copy(update={"http": base.http.model_copy(update={"gzip_level": level})})
    clock = FakeClock(START_MS)
    headers = {**bearer(settings, clock), "Accept-Encoding": "gzip"}
    with TestClient(build_app(settings, parts=["idgen"], clock=clock)) as client:
        with client.stream("POST", GENERATE, json={"count": 4096}, headers=headers) as answer:
            raw = b"".join(answer.iter_raw())
    assert raw[:2] == b"\x1f\x8b"
    assert raw[8] == xfl
    assert len(orjson.loads(gzip.decompress(raw))["ids"]) == 4096


def test_large_answers_are_gzipped_for_clients_that_accept_it(api: Api) -> None:
    """A 4,096-ID answer travels gzipped when asked; a tiny one and a plain client get none."""
    big = api.client.post(
        GENERATE, json={"count": 4096}, headers={**api.auth(), "Accept-Encoding": "gzip"}
    )
    assert big.status_code == 200
    assert big.headers["content-encoding"] == "gzip"
    assert len(big.json()["ids"]) == 4096  # the client undid the compression
    small = api.client.post(GENERATE, headers={**api.auth(), "Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    plain = api.client.post(
        GENERATE, json={"count": 4096}, headers={**api.auth(), "Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
