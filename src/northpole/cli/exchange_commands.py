"""``northpole exchange create|join|match|status|reveal``: gift exchanges over HTTP.

Every command talks to a running server (``--url``, default
``http://127.0.0.1:8080``) with a bearer token (``--token`` or
``NORTHPOLE_TOKEN``): an operator token to create and match, a participant
token (``sub`` = your participant id) to join and reveal. Results go to
stdout (a table, or JSON with ``--json``), messages to stderr.

``reveal`` opens the sealed match here, with your private key: the server
never sees the key and never sends the plaintext.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
import typer
from rich.console import Console
from rich.table import Table

from northpole.core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NorthpoleError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from northpole.exchange.crypto import (
    commitment_root,
    open_match,
    public_key_b64,
    read_private_key,
    verify_commitment,
)
from northpole.exchange.keys import EXCHANGE_ID_PATTERN, rules_json
from northpole.exchange.model import RegionPreference, Rules

app = typer.Typer(help="Secret-Santa style gift exchanges.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/api/v1/exchanges"
_ERRORS: dict[int, type[NorthpoleError]] = {
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def _exchange_id(value: str) -> str:
    if not EXCHANGE_ID_PATTERN.match(value):
        raise InvalidInput("EXCHANGE_ID must be a decimal exchange id", field="exchange_id")
    return value


def _segment(value: str) -> str:
    """A participant id as one URL path segment."""
    return quote(value, safe="")


Url = Annotated[str, typer.Option("--url", envvar="NORTHPOLE_URL", help="The server.")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="NORTHPOLE_TOKEN", help="Bearer token.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ExchangeId = Annotated[
    str, typer.Argument(metavar="EXCHANGE_ID", help="The exchange id.", callback=_exchange_id)
]
KeyFile = Annotated[Path, typer.Option("--key", "-k", help="Your private key file.")]


def _error(status: int, body: Any, url: str) -> NorthpoleError:
    """Our error for a server's error answer."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return Unavailable(f"{url} answered {status}")
    message = str(error.get("message", f"status {status}"))
    field = error.get("field")
    details = error.get("details")
    if isinstance(details, dict) and details.get("kind"):
        message += _explain(details)
    cls = _ERRORS.get(status)
    if cls is not None:
        return cls(message, field=field, details=details)
    if 400 <= status < 500:
        return InvalidInput(message, field=field, details=details)
    return Unavailable(message, field=field)


def _explain(details: Mapping[str, Any]) -> str:
    parts = [f" [{details['kind']}]"]
    for name in ("givers", "receivers"):
        if details.get(name):
            parts.append(f" {name}: {', '.join(map(str, details[name]))}.")
    if details.get("rule"):
        parts.append(f" rule: {details['rule']}.")
    if details.get("region"):
        parts.append(f" region: {details['region']}.")
    return "".join(parts)


def call(url: str, token: str | None, method: str, path: str, body: object | None = None) -> Any:
    """Send one request; return the JSON answer or raise the server's error as ours.

    Raises:
        Unauthenticated: No token given.
        Unavailable: The server cannot be reached or answers 5xx.
        NorthpoleError: The server's 4xx error, as the matching class.
    """
    import httpx  # only the client commands need it; keep it out of servers' memory

    if not token:
        raise Unauthenticated("a token is needed (--token or NORTHPOLE_TOKEN)", field="token")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, read=None)) as client:
            response = client.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach {url}: {exc}") from exc
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None
    if response.status_code >= 400:
        raise _error(response.status_code, data, url)
    return data


def _print_json(data: object) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _print_exchange(data: Mapping[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key in ("id", "name", "year", "region", "organizer", "phase", "participants", "matches"):
        table.add_row(key, str(data.get(key)))
    rules = data.get("rules") or {}
    table.add_row("rules", ", ".join(f"{k}={v}" for k, v in rules.items()))
    for key in ("created_at", "updated_at", "matching_since", "commitment_root"):
        if data.get(key) is not None:
            table.add_row(key, str(data[key]))
    Console().print(table)


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="What to call the exchange.")],
    region: Annotated[str, typer.Option(help="The exchange's home region (a metrics label).")],
    year: Annotated[
        int | None, typer.Option(min=2000, max=9999, help="Its year (default: this year).")
    ] = None,
    budget_tolerance: Annotated[
        float | None,
        typer.Option(min=0, help="Largest budget difference between giver and receiver."),
    ] = None,
    no_reciprocal: Annotated[
        bool, typer.Option("--no-reciprocal", help="Never both A -> B and B -> A.")
    ] = False,
    single_cycle: Annotated[
        bool, typer.Option("--single-cycle", help="One circle through everybody.")
    ] = False,
    cross_region_only: Annotated[
        bool, typer.Option("--cross-region-only", help="Always give to another region.")
    ] = False,
    allow_cross_region: Annotated[
        bool, typer.Option("--allow-cross-region", help="Solve all regions at once.")
    ] = False,
    region_preference: Annotated[
        RegionPreference, typer.Option(help="Soft preference for the receiver's region.")
    ] = RegionPreference.NONE,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create an exchange (operator token); print its id."""
    rules = Rules(
        budget_tolerance=budget_tolerance,
        no_reciprocal=no_reciprocal,
        single_cycle=single_cycle,
        cross_region_only=cross_region_only,
        allow_cross_region=allow_cross_region,
        region_preference=region_preference,
    )
    rules_body = rules_json(rules)
    if budget_tolerance is None:
        del rules_body["budget_tolerance"]  # the server's default applies
    body = {
        "name": name,
        "year": year or datetime.now(UTC).year,
        "region": region,
        "rules": rules_body,
    }
    data = call(url, token, "POST", API, body)
    if as_json:
        _print_json(data)
        return
    typer.echo(f"created exchange {data['name']!r} ({data['year']}, {data['region']})", err=True)
    typer.echo(data["id"])


@app.command("join")
def join(
    exchange_id: ExchangeId,
    participant_id: Annotated[str, typer.Option("--id", help="Your participant id.")],
    region: Annotated[str, typer.Option(help="Your region.")],
    budget: Annotated[float, typer.Option(help="What you mean to spend (> 0).")],
    key: KeyFile = Path("exchange.key"),
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Someone you must not give to.")
    ] = None,
    prefer: Annotated[
        list[str] | None, typer.Option("--prefer", help="Someone you would like to give to.")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Your household: nobody gives within it.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Register in an exchange; the public key comes from your private key file."""
    body = {
        "id": participant_id,
        "region": region,
        "budget": budget,
        "exclusions": exclude or [],
        "preferences": prefer or [],
        "group": group,
        "public_key": public_key_b64(read_private_key(key)),
    }
    data = call(url, token, "POST", f"{API}/{exchange_id}/participants", body)
    if as_json:
        _print_json(data)
        return
    typer.echo(f"{data['id']} joined exchange {exchange_id}", err=True)
    table = Table(title=f"Registration in {exchange_id}", show_header=False)
    for field in ("id", "region", "budget", "exclusions", "preferences", "group", "public_key"):
        value = data.get(field)
        table.add_row(field, ", ".join(value) if isinstance(value, list) else str(value))
    Console().print(table)


@app.command("match")
def match(
    exchange_id: ExchangeId, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Match and commit the exchange (organizer token); nobody is shown who gives to whom."""
    data = call(url, token, "POST", f"{API}/{exchange_id}/match")
    if as_json:
        _print_json(data)
        return
    typer.echo(f"matched {data['matches']} participants; each can now reveal theirs", err=True)
    _print_exchange(data, f"Exchange {exchange_id}")


@app.command("status")
def status(
    exchange_id: ExchangeId, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """Show an exchange's phase and counts."""
    data = call(url, token, "GET", f"{API}/{exchange_id}")
    if as_json:
        _print_json(data)
        return
    _print_exchange(data, f"Exchange {exchange_id}")


def _token_subject(token: str | None) -> str:
    """The ``sub`` of a token, read without verifying it (the server verifies)."""
    import jwt

    if not token:
        raise Unauthenticated("a token is needed (--token or NORTHPOLE_TOKEN)", field="token")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidInput(f"the token is not a JWT: {exc}", field="token") from exc
    return str(claims.get("sub", ""))


@app.command("reveal")
def reveal(
    exchange_id: ExchangeId,
    key: KeyFile = Path("exchange.key"),
    participant_id: Annotated[
        str | None, typer.Option("--id", help="Your participant id (default: the token's sub).")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Fetch your sealed match, open it with your key, and check its commitment.

    The commitment is checked against the sealed payload and against the
    exchange's published list (whose hash must be the committed root).
    """
    pid = participant_id or _token_subject(token)
    private = read_private_key(key)
    sealed = call(url, token, "GET", f"{API}/{exchange_id}/matches/{_segment(pid)}")
    revealed = open_match(sealed["sealed"], private)
    if revealed.exchange_id != exchange_id or revealed.giver != pid:
        raise InvalidInput("the sealed match is for another exchange or giver", field="sealed")
    if not verify_commitment(revealed, sealed["commitment"]):
        raise InvalidInput("the match does not verify against its commitment", field="commitment")
    listed = call(url, token, "GET", f"{API}/{exchange_id}/commitments")
    published = {c["giver"]: c["commitment"] for c in listed["commitments"]}
    if published.get(pid) != sealed["commitment"]:
        raise InvalidInput("your commitment is not the published one", field="commitment")
    if commitment_root(published) != listed["commitment_root"]:
        raise InvalidInput("the published commitments do not hash to the root", field="commitment")
    result = {
        "exchange_id": exchange_id,
        "giver": pid,
        "receiver": revealed.receiver,
        "commitment": sealed["commitment"],
        "commitment_root": listed["commitment_root"],
        "verified": True,
    }
    if as_json:
        _print_json(result)
        return
    typer.echo("commitment verified", err=True)
    table = Table(title=f"Your match in exchange {exchange_id}", show_header=False)
    table.add_row("you give to", revealed.receiver)
    table.add_row("commitment", sealed["commitment"])
    Console().print(table)
