"""The one exception tree of northpole.

Every error a part raises on purpose derives from :class:`NorthpoleError`, and
each class carries the HTTP status and machine-readable ``code`` that the one
HTTP handler in :mod:`northpole.core.http` turns into::

    {"error": {"code": "...", "message": "...", "field": "..." | null}}

An error that has more to say than one message (an infeasible matching names
the participants at fault) passes ``details``, a JSON-ready mapping that joins
the body as ``error.details``.

The tree::

    NorthpoleError                      500 internal
    ├── InvalidInput                    422 invalid_input      (field names the culprit)
    │   └── PayloadTooLarge             413 payload_too_large
    ├── AuthError
    │   ├── Unauthenticated             401 unauthenticated
    │   └── Forbidden                   403 forbidden
    ├── NotFound                        404 not_found
    ├── Conflict                        409 conflict
    ├── Unavailable                     503 unavailable
    │   ├── ClockMovedBackwards         503 clock_moved_backwards
    │   └── WorkshopIdUnavailable       503 workshop_id_unavailable
    └── ConfigurationError              500 configuration_error

Driver and library exceptions never leave an adapter bare: adapters re-raise
them as one of these with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class NorthpoleError(Exception):
    """Root of every deliberate northpole error."""

    status_code: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = dict(details) if details is not None else None

    def to_body(self) -> dict[str, dict[str, Any]]:
        """Return the JSON error body for this error (with ``details`` when there are some)."""
        error: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class InvalidInput(NorthpoleError):
    """The caller sent something we cannot accept; ``field`` names it."""

    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class AuthError(NorthpoleError):
    """Base of authentication and authorisation failures."""


class Unauthenticated(AuthError):
    """No token, or a token that is malformed, forged or expired."""

    status_code = 401
    code = "unauthenticated"


class Forbidden(AuthError):
    """A valid token whose role may not do this."""

    status_code = 403
    code = "forbidden"


class NotFound(NorthpoleError):
    """The named thing does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(NorthpoleError):
    """The request clashes with the current state."""

    status_code = 409
    code = "conflict"


class Unavailable(NorthpoleError):
    """The service cannot answer right now; retrying later may succeed."""

    status_code = 503
    code = "unavailable"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class ClockMovedBackwards(Unavailable):
    """The wall clock went back further than the generator may wait out."""

    code = "clock_moved_backwards"

    def __init__(self, *, behind_ms: int, tolerance_ms: int) -> None:
        super().__init__(
            f"the clock is {behind_ms} ms behind the last issued timestamp "
            f"(tolerance {tolerance_ms} ms); refusing to issue IDs until it catches up",
            retry_after_s=max(behind_ms / 1000, 0.001),
        )
        self.behind_ms = behind_ms
        self.tolerance_ms = tolerance_ms


class WorkshopIdUnavailable(Unavailable):
    """No workshop id could be had, or the one held was lost."""

    code = "workshop_id_unavailable"


class ConfigurationError(NorthpoleError):
    """Settings that cannot work together; raised at start-up."""

    code = "configuration_error"
