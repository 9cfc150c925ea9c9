"""Unit tests for northpole.core.logging: one JSON line format for structlog and stdlib loggers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from northpole.core.logging import configure_logging, get_logger
from northpole.core.settings import LogFormat

_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


@contextmanager
def configured(**kwargs: Any) -> Iterator[None]:
    """Configure logging for the body of a test, then put every global back as it was.

    The restore runs inside the test's call phase, so pytest's own per-phase log
    handlers are put back before pytest removes them.
    """
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_uvicorn = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in _UVICORN
    }
    try:
        configure_logging(**kwargs)
        yield
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (handlers, propagate) in saved_uvicorn.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every non-empty line of ``text`` as one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_structlog_line_is_json_with_keys_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """A structlog line is one JSON object: timestamp, level, service, trace_id, message, ..."""
    with configured(service="x"):
        structlog.contextvars.bind_contextvars(trace_id="abc123")
        get_logger("test.structlog").info("hello", duration_ms=1.5, extra="y")
    [line] = json_lines(capsys.readouterr().out)
    assert list(line) == [
        "timestamp",
        "level",
        "service",
        "trace_id",
        "message",
        "duration_ms",
        "extra",
    ]
    assert line["level"] == "INFO"
    assert line["service"] == "x"
    assert line["trace_id"] == "abc123"
    assert line["message"] == "hello"
    assert line["duration_ms"] == 1.5
    assert line["timestamp"].endswith("Z")
    assert "T" in line["timestamp"]


def test_stdlib_line_is_json_in_same_format(capsys: pytest.CaptureFixture[str]) -> None:
    """A standard-library logging line comes out in the same JSON format and key order."""
    with configured(service="x"):
        structlog.contextvars.bind_contextvars(trace_id="t-1")
        logging.getLogger("test.stdlib").warning("std %s", "line")
    [line] = json_lines(capsys.readouterr().out)
    assert list(line) == ["timestamp", "level", "service", "trace_id", "message"]
    assert line["level"] == "WARNING"
    assert line["service"] == "x"
    assert line["trace_id"] == "t-1"
    assert line["message"] == "std line"


def test_trace_id_absent_when_not_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a bound trace id the key is left out and the order of the rest holds."""
    with configured(service="svc"):
        get_logger("test.order").info("no trace", duration_ms=2)
    [line] = json_lines(capsys.readouterr().out)
    assert list(line) == ["timestamp", "level", "service", "message", "duration_ms"]


def test_gift_id_key_sits_between_trace_id_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A gift_id key is placed after trace_id and before message."""
    with configured(service="svc"):
        structlog.contextvars.bind_contextvars(trace_id="t")
        get_logger("test.gift").info("issued", zzz=1, gift_id="42", duration_ms=0.1)
    [line] = json_lines(capsys.readouterr().out)
    assert list(line)[:7] == [
        "timestamp",
        "level",
        "service",
        "trace_id",
        "gift_id",
        "message",
        "duration_ms",
    ]


def test_exceptions_are_rendered_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """structlog and stdlib exceptions are rendered into an ``exception`` key of one JSON line."""
    with configured(service="x"):
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            get_logger("test.exc").exception("failed structlog")
            logging.getLogger("test.exc").exception("failed stdlib")
    lines = json_lines(capsys.readouterr().out)
    assert [line["message"] for line in lines] == ["failed structlog", "failed stdlib"]
    for line in lines:
        assert line["level"] == "ERROR"
        assert "Traceback" in line["exception"]
        assert "ZeroDivisionError: boom" in line["exception"]


def test_level_filters_lower_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Lines below the configured level are dropped for both logger kinds."""
    with configured(service="x", level="warning"):
        get_logger("test.level").info("hidden")
        logging.getLogger("test.level").info("hidden too")
        get_logger("test.level").error("shown")
    lines = json_lines(capsys.readouterr().out)
    assert [(line["level"], line["message"]) for line in lines] == [("ERROR", "shown")]


def test_uvicorn_loggers_propagate_to_root(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn's loggers lose their own handlers and log through the JSON root handler."""
    with configured(service="x"):
        assert logging.getLogger("uvicorn.error").handlers == []
        logging.getLogger("uvicorn.error").info("server up")
    [line] = json_lines(capsys.readouterr().out)
    assert line["message"] == "server up"


def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    """The console format renders a human line that still contains the message."""
    with configured(service="x", fmt=LogFormat.CONSOLE):
        get_logger("test.console").info("for people")
    out = capsys.readouterr().out
    assert "for people" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])
