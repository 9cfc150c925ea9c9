"""Plain ASGI middleware: per-request context, body-size limit, access log and metrics.

Written against raw ASGI rather than ``BaseHTTPMiddleware`` because it runs on
every request and must not copy bodies or add a task per request.
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from northpole.core.errors import PayloadTooLarge
from northpole.core.http_errors import error_response
from northpole.core.logging import get_logger
from northpole.core.metrics import HttpMetrics

_log = get_logger("northpole.http")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Paths that are scraped or probed constantly: counted, never access-logged.
_QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def trace_id_from_headers(headers: dict[bytes, bytes]) -> str:
    """Take the trace id from a W3C ``traceparent``, else ``X-Request-ID``, else make one."""
    parent = headers.get(b"traceparent", b"").decode("latin-1").strip()
    if match := _TRACEPARENT.match(parent):
        return match.group(1)
    given = headers.get(b"x-request-id", b"").decode("latin-1").strip()
    if _REQUEST_ID.match(given):
        return given
    return secrets.token_hex(16)


def _route_template(scope: Scope) -> str:
    """Return the matched route's template (set in the scope by the router), for labels."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Bind a trace id, cap the body size, then log and measure the request.

    Args:
        app: The wrapped ASGI app.
        metrics: Where request counts and latencies go.
        max_body_bytes: Larger bodies get a 413 before the route runs.
    """

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        trace_id = trace_id_from_headers(headers)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", trace_id.encode()),
                ]
            await send(message)

        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"the request body is larger than {limit} bytes", field="body"
                    )
            return message

        structlog.contextvars.bind_contextvars(trace_id=trace_id)
        try:
            declared = headers.get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                response = error_response(
                    413,
                    "payload_too_large",
                    f"the request body is larger than {limit} bytes",
                    "body",
                )
                await response(scope, receive, send_with_context)
            else:
                await self.app(scope, receive_capped, send_with_context)
        finally:
            self._record(scope, status, time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("trace_id")

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        method = scope["method"]
        route = _route_template(scope)
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.duration.labels(method, route).observe(elapsed)
        if scope["path"] not in _QUIET_PATHS:
            _log.info(
                "request",
                method=method,
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
