"""``northpole demo``: run a season against a running northpole and show what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console

from northpole.core.auth import Role, TokenService, load_secret
from northpole.core.logging import configure_logging
from northpole.core.settings import Settings
from northpole.demo.client import Api
from northpole.demo.report import render
from northpole.demo.season import Plan, Report, new_progress, run_season


async def _season(url: str, plan: Plan, tokens: TokenService) -> Report:
    def token_for(sub: str, role: Role) -> str:
        return tokens.issue(sub=sub, role=role, ttl_s=3600)

    api = Api(url, token_for("demo-santa", Role.OPERATOR))
    try:
        with new_progress() as progress:
            return await run_season(api, plan, token_for, progress)
    finally:
        await api.close()


def demo(
    url: Annotated[str, typer.Option(help="The running northpole.")] = "http://127.0.0.1:8080",
    gifts: Annotated[int, typer.Option(min=1, max=1_000_000, help="Gifts to register.")] = 10_000,
    elves: Annotated[int, typer.Option(min=2, max=5_000, help="Exchange participants.")] = 30,
    concurrency: Annotated[int, typer.Option(min=1, max=5_000, help="Tasks at once.")] = 200,
    flaky: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of tasks that fail once.")
    ] = 0.02,
    timeout_s: Annotated[float, typer.Option(min=1, help="Give up after this long.")] = 600.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drive a running system through one season: gifts, tasks, elves, an exchange.

    Tokens are signed with the key of the data directory (embedded edition) or
    NORTHPOLE_AUTH__SECRET (cluster edition), as the server's are.
    """
    settings = Settings()
    # The elves' expected failures (flaky tasks) would log a warning each.
    configure_logging(service="northpole-demo", level="ERROR", stream=sys.stderr)
    tokens = TokenService(load_secret(settings), settings.auth)
    plan = Plan(
        gifts=gifts, elves=elves, concurrency=concurrency, flaky_share=flaky, timeout_s=timeout_s
    )
    report = asyncio.run(_season(url, plan, tokens))
    if json_out:
        sys.stdout.write(orjson.dumps(dataclasses.asdict(report)).decode() + "\n")
    else:
        render(report, Console())
