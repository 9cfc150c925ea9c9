"""Structured JSON logs in the design's format, built from small structlog processors.

Every line is one JSON object whose first keys are, in order::

    timestamp, level, service, trace_id, gift_id, message, duration_ms

(``trace_id``, ``gift_id`` and ``duration_ms`` only when known). Context such as
the trace id is bound once per request with :func:`structlog.contextvars` and
appears on every line logged while that request runs. Standard-library loggers
(uvicorn's included) are routed through the same chain.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from northpole.core.settings import LogFormat

_KEY_ORDER = ("timestamp", "level", "service", "trace_id", "gift_id", "message", "duration_ms")


def _add_service(service: str) -> Processor:
    def add_service(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        return event

    return add_service


def _uppercase_level(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event["level"] = str(event.get("level", "info")).upper()
    return event


def _order_keys(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    ordered: dict[str, Any] = {key: event.pop(key) for key in _KEY_ORDER if key in event}
    ordered.update(event)
    return ordered


def _drop_stdlib_noise(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    event.pop("color_message", None)
    return event


def _render_json(_: WrappedLogger, __: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def shared_processors(service: str) -> list[Processor]:
    """Return the processors every log line passes through, before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _uppercase_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_service(service),
        structlog.processors.format_exc_info,
        structlog.processors.EventRenamer("message"),
    ]


def configure_logging(
    *,
    service: str,
    level: str = "INFO",
    fmt: LogFormat = LogFormat.JSON,
    stream: TextIO | None = None,
) -> None:
    """Send every log line, ours and the standard library's, to one stream in one format.

    Args:
        service: The value of the ``service`` key on every line.
        level: The lowest level logged (``DEBUG``, ``INFO``, ...).
        fmt: ``json`` for machines, ``console`` for people at a terminal.
        stream: Where lines go (default stdout, as servers log; commands whose
            stdout is their result log to stderr).
    """
    renderer: Processor
    if fmt is LogFormat.JSON:
        renderer = _render_json
    else:
        renderer = structlog.dev.ConsoleRenderer(event_key="message")
    pre = shared_processors(service)
    structlog.configure(
        processors=[*pre, _order_keys, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_stdlib_noise,
            _order_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger; configure logging first for JSON output."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
