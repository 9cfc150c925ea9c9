"""Unit tests for northpole.core.settings, northpole.core.errors and northpole.core.validation."""

from __future__ import annotations

import inspect
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from northpole.core import errors
from northpole.core.errors import (
    AuthError,
    ClockMovedBackwards,
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidInput,
    NorthpoleError,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    WorkshopIdUnavailable,
)
from northpole.core.settings import (
    DEFAULT_EPOCH_MS,
    IdGenSettings,
    LogFormat,
    Settings,
)
from northpole.core.validation import describe_error, field_from_loc, parse_body

# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["0", "10", "fast"])
def test_a_gzip_level_outside_1_to_9_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """NORTHPOLE_HTTP__GZIP_LEVEL must be a zlib level; the error names http.gzip_level."""
    monkeypatch.setenv("NORTHPOLE_HTTP__GZIP_LEVEL", level)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [e["loc"] for e in info.value.errors()] == [("http", "gzip_level")]


def test_settings_defaults() -> None:
    """With no environment, Settings has the documented defaults."""
    settings = Settings()
    assert settings.data_dir == Path(".northpole")
    assert settings.log_level == "INFO"
    assert settings.log_format is LogFormat.JSON
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.http.max_body_bytes == 8_388_608
    assert settings.auth.secret is None
    assert settings.auth.secret_file is None
    assert (settings.auth.algorithm, settings.auth.issuer, settings.auth.audience) == (
        "HS256",
        "northpole",
        "northpole",
    )
    assert settings.idgen.workshop_id == 0
    assert settings.idgen.epoch_ms == DEFAULT_EPOCH_MS == 1_735_689_600_000
    assert settings.idgen.clock_tolerance_ms == 10
    assert settings.idgen.reserve_ms == 1000


def test_settings_read_prefixed_and_nested_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NORTHPOLE_* variables set top-level fields and ``__`` reaches nested groups."""
    monkeypatch.setenv("NORTHPOLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NORTHPOLE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("NORTHPOLE_LOG_FORMAT", "console")
    monkeypatch.setenv("NORTHPOLE_IDGEN__WORKSHOP_ID", "7")
    monkeypatch.setenv("NORTHPOLE_IDGEN__RESERVE_MS", "250")
    monkeypatch.setenv("NORTHPOLE_HTTP__PORT", "9001")
    monkeypatch.setenv("NORTHPOLE_HTTP__MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("NORTHPOLE_AUTH__SECRET", "env-secret-value")
    monkeypatch.setenv("NORTHPOLE_AUTH__LEEWAY_S", "0")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.log_level == "DEBUG"
    assert settings.log_format is LogFormat.CONSOLE
    assert settings.idgen.workshop_id == 7
    assert settings.idgen.reserve_ms == 250
    assert settings.http.port == 9001
    assert settings.http.max_body_bytes == 2048
    assert settings.auth.secret is not None
    assert settings.auth.secret.get_secret_value() == "env-secret-value"
    assert settings.auth.leeway_s == 0


def test_settings_ignore_unknown_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown NORTHPOLE_* variables are ignored rather than rejected."""
    monkeypatch.setenv("NORTHPOLE_NO_SUCH_SETTING", "1")
    assert Settings().idgen.workshop_id == 0


def test_settings_secret_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The auth secret does not appear in the settings' repr."""
    monkeypatch.setenv("NORTHPOLE_AUTH__SECRET", "super-secret-value")
    assert "super-secret-value" not in repr(Settings())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NORTHPOLE_IDGEN__WORKSHOP_ID", "1024"),
        ("NORTHPOLE_IDGEN__WORKSHOP_ID", "-1"),
        ("NORTHPOLE_IDGEN__WORKSHOP_ID", "seven"),
        ("NORTHPOLE_IDGEN__RESERVE_MS", "9"),
        ("NORTHPOLE_IDGEN__CLOCK_TOLERANCE_MS", "10001"),
        ("NORTHPOLE_IDGEN__COLLISION_SAMPLE_EVERY", "0"),
        ("NORTHPOLE_HTTP__PORT", "65536"),
        ("NORTHPOLE_HTTP__MAX_BODY_BYTES", "1023"),
        ("NORTHPOLE_AUTH__DEFAULT_TTL_S", "0"),
        ("NORTHPOLE_LOG_FORMAT", "xml"),
    ],
)
def test_settings_reject_invalid_env(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Out-of-range or malformed values from the environment raise a ValidationError."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_reject_invalid_constructor_values() -> None:
    """Invalid values passed in code raise a ValidationError too."""
    with pytest.raises(ValidationError):
        IdGenSettings(workshop_id=1024)
    with pytest.raises(ValidationError):
        Settings(idgen={"workshop_id": 1024})


def test_settings_nested_defaults_are_not_shared() -> None:
    """Changing one Settings' nested group does not change another's."""
    first = Settings()
    first.idgen.workshop_id = 9
    first.http.port = 1
    assert Settings().idgen.workshop_id == 0
    assert Settings().http.port == 8080


def test_ensure_data_dir_creates_private_directory(tmp_path: Path) -> None:
    """ensure_data_dir creates missing parents and a mode-0700 directory, and returns it."""
    target = tmp_path / "a" / "b"
    assert Settings(data_dir=target).ensure_data_dir() == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert Settings(data_dir=target).ensure_data_dir() == target


# -- errors -----------------------------------------------------------------------------

DOCUMENTED: dict[type[NorthpoleError], tuple[int, str, type[Exception]]] = {
    NorthpoleError: (500, "internal", Exception),
    InvalidInput: (422, "invalid_input", NorthpoleError),
    PayloadTooLarge: (413, "payload_too_large", InvalidInput),
    AuthError: (500, "internal", NorthpoleError),
    Unauthenticated: (401, "unauthenticated", AuthError),
    Forbidden: (403, "forbidden", AuthError),
    NotFound: (404, "not_found", NorthpoleError),
    Conflict: (409, "conflict", NorthpoleError),
    Unavailable: (503, "unavailable", NorthpoleError),
    ClockMovedBackwards: (503, "clock_moved_backwards", Unavailable),
    WorkshopIdUnavailable: (503, "workshop_id_unavailable", Unavailable),
    ConfigurationError: (500, "configuration_error", NorthpoleError),
}


def _error_classes() -> set[type[NorthpoleError]]:
    return {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, NorthpoleError) and obj.__module__ == errors.__name__
    }


def test_every_error_class_is_documented() -> None:
    """The error module defines exactly the documented tree of classes."""
    assert _error_classes() == set(DOCUMENTED)


@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_error_class_status_code_and_parent(cls: type[NorthpoleError]) -> None:
    """Each error class has its documented HTTP status, code and direct parent."""
    status, code, parent = DOCUMENTED[cls]
    assert cls.status_code == status
    assert cls.code == code
    assert cls.__bases__ == (parent,)


def _instance(cls: type[NorthpoleError], field: str | None) -> NorthpoleError:
    if cls is ClockMovedBackwards:
        return ClockMovedBackwards(behind_ms=1500, tolerance_ms=10)
    return cls("something went wrong", field=field)


@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_error_to_body_shape(cls: type[NorthpoleError]) -> None:
    """to_body returns {"error": {"code", "message", "field"}} with the instance's values."""
    field = None if cls is ClockMovedBackwards else "count"
    exc = _instance(cls, field)
    body = exc.to_body()
    assert body == {"error": {"code": cls.code, "message": exc.message, "field": field}}
    assert str(exc) == exc.message


def test_error_field_defaults_to_none() -> None:
    """An error built without a field has field None in its body."""
    assert NotFound("gone").to_body() == {
        "error": {"code": "not_found", "message": "gone", "field": None}
    }


def test_unavailable_carries_retry_after() -> None:
    """Unavailable keeps an optional retry_after_s, None by default."""
    assert Unavailable("busy").retry_after_s is None
    assert Unavailable("busy", retry_after_s=2.5).retry_after_s == 2.5
    assert WorkshopIdUnavailable("taken", field="workshop_id").retry_after_s is None


def test_clock_moved_backwards_describes_the_jump() -> None:
    """ClockMovedBackwards records how far behind it is and retries after that long."""
    exc = ClockMovedBackwards(behind_ms=1500, tolerance_ms=10)
    assert (exc.behind_ms, exc.tolerance_ms) == (1500, 10)
    assert exc.retry_after_s == 1.5
    assert "1500 ms" in exc.message
    assert "tolerance 10 ms" in exc.message
    assert exc.field is None
    assert ClockMovedBackwards(behind_ms=0, tolerance_ms=0).retry_after_s == 0.001


# -- validation -------------------------------------------------------------------------


class Task(BaseModel):
    """A nested model for field-name tests."""

    priority: int = Field(ge=0)


class Batch(BaseModel):
    """A test body with a list of nested models."""

    model_config = ConfigDict(extra="forbid", strict=True)

    count: int = Field(default=1, ge=1)
    tasks: list[Task] = []


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("body", "count"), "count"),
        (("body", "tasks", 3, "priority"), "tasks.3.priority"),
        (("query", "limit"), "limit"),
        (("path", "id"), "id"),
        (("header", "x-token"), "x-token"),
        (("body",), "body"),
        (("query",), "query"),
        (("count",), "count"),
        ((0,), "0"),
        ((), None),
    ],
)
def test_field_from_loc(loc: tuple[Any, ...], expected: str | None) -> None:
    """field_from_loc drops location prefixes, keeps list indexes and names a bare location."""
    assert field_from_loc(loc) == expected


def test_describe_error_special_cases() -> None:
    """describe_error names the body for invalid JSON and a missing body."""
    assert describe_error({"type": "json_invalid", "loc": ("body", 7)}) == (
        "the request body is not valid JSON",
        "body",
    )
    assert describe_error({"type": "missing", "loc": ("body",)}) == (
        "a JSON request body is required",
        "body",
    )
    assert describe_error(
        {"type": "missing", "loc": ("body", "count"), "msg": "Field required"}
    ) == (
        "count: Field required",
        "count",
    )
    assert describe_error({"type": "model_type", "loc": (), "msg": "bad"}) == ("body: bad", "body")


def test_parse_body_returns_model() -> None:
    """parse_body parses valid JSON into the model."""
    parsed = parse_body(b'{"count": 3, "tasks": [{"priority": 1}]}', Batch)
    assert parsed == Batch(count=3, tasks=[Task(priority=1)])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[]", "body"),
        (b'{"count": 0}', "count"),
        (b'{"count": "3"}', "count"),
        (b'{"count": 1, "other": 2}', "other"),
        (b'{"tasks": [{"priority": 1}, {"priority": -1}]}', "tasks.1.priority"),
    ],
)
def test_parse_body_invalid_input_names_field(raw: bytes, field: str) -> None:
    """parse_body raises InvalidInput naming the first offending field."""
    with pytest.raises(InvalidInput) as caught:
        parse_body(raw, Batch)
    assert caught.value.field == field
    assert caught.value.status_code == 422
    assert caught.value.message


def test_error_details_join_the_body() -> None:
    """An error with details carries them as error.details; without, the key is absent."""
    exc = InvalidInput("no match", field="participants", details={"givers": ["a", "b"]})
    assert exc.to_body() == {
        "error": {
            "code": "invalid_input",
            "message": "no match",
            "field": "participants",
            "details": {"givers": ["a", "b"]},
        }
    }
    assert "details" not in InvalidInput("x").to_body()["error"]
