"""The app factory: one FastAPI app that mounts any set of parts.

A *part* (the Gift ID service today; the task queue and others later) is an
object with a name, a router, a lifespan and a readiness check. ``northpole up``
mounts every part in one process; ``northpole idgen serve`` mounts one.

Every app gets, besides the parts' routes:

* ``GET /healthz``: liveness, 200 while the process serves requests.
* ``GET /readyz``: readiness, 200 only when every part says it is ready.
* ``GET /metrics``: Prometheus text format from the app's own registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Protocol

import orjson
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response

import northpole
from northpole.core.auth import TokenService
from northpole.core.errors import NorthpoleError
from northpole.core.http_errors import install_error_handlers
from northpole.core.logging import get_logger
from northpole.core.metrics import CONTENT_TYPE_LATEST, HttpMetrics, render
from northpole.core.middleware import RequestContextMiddleware
from northpole.core.readiness import Readiness as Readiness  # re-exported: parts import it here
from northpole.core.settings import Settings

_log = get_logger(__name__)


class Part(Protocol):
    """One service that can be mounted into an app."""

    name: str

    def router(self) -> APIRouter:
        """Return the part's routes (each already guarded by its roles)."""
        ...

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Acquire the part's resources on enter and release them on exit."""
        ...

    def readiness(self) -> Readiness:
        """Say whether the part can serve requests now."""
        ...


def json_response(body: object, status_code: int = 200) -> Response:
    """Return ``body`` serialised with orjson."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def create_app(
    settings: Settings,
    parts: Sequence[Part],
    *,
    registry: CollectorRegistry,
    tokens: TokenService,
    on_started: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app that serves ``parts``.

    Args:
        settings: The process settings.
        parts: The services to mount, each entered in order at start-up.
        registry: The Prometheus registry behind ``/metrics``.
        tokens: Verifies bearer tokens on every API route.
        on_started: Called once every part has started (for example to print a banner).
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for part in parts:
                try:
                    await stack.enter_async_context(part.lifespan())
                except NorthpoleError as exc:
                    _log.error("start-up failed", part=part.name, code=exc.code, error=exc.message)
                    raise
            _log.info("started", parts=[p.name for p in parts])
            if on_started is not None:
                on_started()
            yield
            _log.info("stopping", parts=[p.name for p in parts])

    app = FastAPI(
        title="northpole",
        version=northpole.__version__,
        description="Santa's distributed gift management system.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.registry = registry
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=HttpMetrics.register(registry),
        max_body_bytes=settings.http.max_body_bytes,
    )
    # Outermost: compress what the routes (and the error handler) answer.
    app.add_middleware(
        GZipMiddleware,
        minimum_size=settings.http.gzip_min_bytes,
        compresslevel=settings.http.gzip_level,
    )
    app.include_router(_ops_router(parts, registry))
    for part in parts:
        app.include_router(part.router())
    return app


def _ops_router(parts: Sequence[Part], registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get("/readyz", summary="Readiness")
    async def readyz() -> Response:
        checks = {part.name: part.readiness() for part in parts}
        ready = all(check.ready for check in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "parts": {name: {"ready": c.ready, "detail": c.detail} for name, c in checks.items()},
        }
        return json_response(body, 200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    return router
