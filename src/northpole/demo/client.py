"""A small client of northpole's HTTP API for the demo (any HTTP client would do)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from northpole.core.errors import Unavailable


class ApiError(Exception):
    """The API answered with an error; ``status`` and ``body`` say which."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} answered {status}: {body}")
        self.status = status
        self.body = body


class Api:
    """JSON over HTTP with a bearer token.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8080``.
        token: A bearer token.
        timeout_s: Per request.
    """

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=16),
        )

    def as_(self, token: str) -> Api:
        """The same server with another token."""
        return Api(self.base_url, token)

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Send a request; return the JSON answer; raise :class:`ApiError` on 4xx/5xx."""
        content = None if body is None else orjson.dumps(body)
        try:
            answer = await self._client.request(
                method,
                path,
                content=content,
                params={k: v for k, v in params.items() if v is not None},
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"{method} {path}: {exc}") from exc
        data = orjson.loads(answer.content) if answer.content else None
        if answer.status_code >= 400:
            raise ApiError(method, path, answer.status_code, data)
        return data

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until ``/readyz`` answers 200."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            try:
                answer = await self._client.get("/readyz")
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if loop.time() > give_up:
                raise Unavailable(f"{self.base_url} was not ready within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Close connections."""
        await self._client.aclose()
