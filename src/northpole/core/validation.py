"""Turn request bodies into models, with errors that name the offending field.

Routes that read their body themselves (to accept JSON whatever the
``Content-Type``, or to skip FastAPI's parsing on a hot path) use
:func:`parse_body`; it raises the same ``InvalidInput`` FastAPI's own
validation is translated to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from northpole.core.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def field_from_loc(loc: Sequence[Any]) -> str | None:
    """Turn a pydantic error location such as ``("body", "count")`` into ``"count"``.

    List indexes stay in the name (``tasks.3.priority``) so the caller can find
    the element; a location that is only ``body`` names the body itself.
    """
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in _LOCATIONS)]
    if parts:
        return ".".join(parts)
    return str(loc[0]) if loc else None


def describe_error(error: Any) -> tuple[str, str | None]:
    """Return a message and field name for one pydantic error dict."""
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "json_invalid":
        return "the request body is not valid JSON", "body"
    if kind == "missing" and loc == ("body",):
        return "a JSON request body is required", "body"
    field = field_from_loc(loc) or "body"
    return f"{field}: {error.get('msg', 'invalid value')}", field


def load_json(raw: bytes) -> Any:
    """Parse JSON bytes.

    Raises:
        InvalidInput: The bytes are not JSON (``field`` is ``body``).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("the request body is not valid JSON", field="body") from exc


def validate(data: Any, model: type[M]) -> M:
    """Check parsed JSON against ``model``.

    Raises:
        InvalidInput: ``field`` names the first offending field (``body`` for the
            body as a whole).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = describe_error(exc.errors()[0])
        raise InvalidInput(message, field=field) from exc


def parse_body(raw: bytes, model: type[M]) -> M:
    """Parse a JSON body into ``model`` (:func:`load_json` then :func:`validate`)."""
    return validate(load_json(raw), model)
