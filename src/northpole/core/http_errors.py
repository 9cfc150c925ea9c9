"""The one translation from errors to HTTP responses.

Routes never raise HTTP errors themselves: they raise :mod:`northpole.core.errors`
exceptions, and the handlers here turn those, FastAPI's validation errors and
Starlette's routing errors into the one JSON error body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from northpole.core.errors import NorthpoleError, Unauthenticated, Unavailable
from northpole.core.logging import get_logger
from northpole.core.validation import describe_error

_log = get_logger(__name__)
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Return the JSON error body as a response."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


async def _northpole_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, NorthpoleError)  # noqa: S101 - registered for this type only
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Unavailable) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if exc.status_code >= 500:
        _log.error("request failed", code=exc.code, error=exc.message)
    return Response(
        orjson.dumps(exc.to_body()),
        status_code=exc.status_code,
        media_type="application/json",
        headers=headers or None,
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = list(exc.errors())
    message, field = describe_error(errors[0]) if errors else ("invalid request", None)
    return error_response(422, "invalid_input", message, field)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    _log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON body."""
    app.add_exception_handler(NorthpoleError, _northpole_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
