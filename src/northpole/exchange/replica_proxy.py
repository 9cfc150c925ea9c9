"""Forward exchange writes from a follower replica to the matcher leader.

Any replica answers the exchange API. Reads are served where they arrive
(etcd reads are linearizable, so every replica sees the same state). Writes
(``POST``, ``PUT``, ``PATCH``, ``DELETE`` under ``/api/v1/exchanges``) are
*proxied* to the leader's advertised address, which the replicas publish as
their election value: the client sees one answer, the leader's, with its
status and body. A request that was already forwarded once is never forwarded
again (no loops while leadership moves): it gets 503 with ``Retry-After``.

A proxy rather than a 307 redirect: clients need not follow redirects or know
the replicas' internal addresses, and a write keeps its bearer token on one
hop inside the cluster.
"""

from __future__ import annotations

from typing import Protocol

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from northpole.core.errors import NorthpoleError, Unavailable
from northpole.core.http_errors import error_response
from northpole.core.logging import get_logger

_log = get_logger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORWARDED_PATHS = ("/api/v1/exchanges",)
FORWARDED_HEADER = b"x-northpole-forwarded-by"
_PASSED_HEADERS = frozenset({b"authorization", b"content-type", b"accept", b"x-request-id"})


class Router(Protocol):
    """Says where a write goes: ``None`` here, else the leader's address."""

    replica: int

    async def route(self) -> str | None:
        """Return ``None`` to handle the write here, or the leader's base URL."""
        ...


def is_forwarded_write(scope: Scope) -> bool:
    """Whether a request is an exchange write (the kind that goes to the leader)."""
    return (
        scope["type"] == "http"
        and scope["method"] in WRITE_METHODS
        and str(scope["path"]).startswith(FORWARDED_PATHS)
    )


class ForwardWrites:
    """ASGI middleware: exchange writes on a follower are proxied to the leader.

    Args:
        app: The wrapped app.
        router: The replica (knows the leader).
        timeout_s: How long to wait for the leader's answer.
    """

    def __init__(self, app: ASGIApp, *, router: Router, timeout_s: float) -> None:
        self.app = app
        self.router = router
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI scope."""
        if not is_forwarded_write(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            target = await self.router.route()
            if target is None:
                await self.app(scope, receive, send)
                return
            if FORWARDED_HEADER in headers:
                raise Unavailable("the matcher leader is changing; retry", retry_after_s=1.0)
            await self._forward(scope, receive, send, target, headers)
        except NorthpoleError as exc:
            retry = getattr(exc, "retry_after_s", None)
            extra = {"Retry-After": str(max(1, round(retry)))} if retry else None
            response = error_response(exc.status_code, exc.code, exc.message, exc.field, extra)
            await response(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, target: str, headers: dict[bytes, bytes]
    ) -> None:
        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        url = target.rstrip("/") + str(scope["path"]) + (f"?{query}" if query else "")
        out = {k.decode(): v.decode("latin-1") for k, v in headers.items() if k in _PASSED_HEADERS}
        out[FORWARDED_HEADER.decode()] = str(self.router.replica)
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.request(scope["method"], url, content=body, headers=out)
        except httpx.HTTPError as exc:
            _log.warning("forwarding to the matcher leader failed", leader=target, error=str(exc))
            raise Unavailable(
                "the matcher leader did not answer; retry", retry_after_s=1.0
            ) from exc
        passed = [
            (name.encode(), value.encode("latin-1"))
            for name, value in response.headers.items()
            if name.lower() in ("content-type", "retry-after", "location")
        ]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": passed}
        )
        await send({"type": "http.response.body", "body": response.content})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
