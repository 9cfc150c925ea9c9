"""JWT bearer-token authentication with four roles, enforced by one FastAPI dependency.

Tokens are signed JWTs (PyJWT) carrying ``sub`` (who), ``role`` (what they may
do), ``iat``, ``exp``, ``iss`` and ``aud``. ``admin`` may do everything; routes
name the other roles they admit::

    @router.post("/things", dependencies=[require_roles(Role.OPERATOR, Role.WORKER)])

A missing, malformed, forged or expired token is a 401; a valid token with a
role the route does not admit is a 403.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from northpole.core.clock import Clock, SystemClock
from northpole.core.errors import ConfigurationError, Forbidden, InvalidInput, Unauthenticated
from northpole.core.settings import AuthSettings, Settings

SECRET_FILE_NAME = "jwt-secret"  # noqa: S105 - a file name, not a secret
_MIN_SECRET_BYTES = 32


class Role(StrEnum):
    """What a token's holder may do."""

    ADMIN = "admin"
    OPERATOR = "operator"
    WORKER = "worker"
    PARTICIPANT = "participant"


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified holder of a token."""

    sub: str
    role: Role


class TokenService:
    """Issue and verify tokens with one shared secret.

    Args:
        secret: The HMAC key (at least 32 bytes).
        settings: Algorithm, issuer, audience, default lifetime and leeway.
        clock: Where ``iat``/``exp`` come from.
    """

    def __init__(
        self, secret: bytes, settings: AuthSettings, *, clock: Clock | None = None
    ) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the JWT secret must be at least {_MIN_SECRET_BYTES} bytes long"
            )
        self._secret = secret
        self._settings = settings
        self._clock = clock or SystemClock()

    def issue(self, *, sub: str, role: Role | str, ttl_s: int | None = None) -> str:
        """Return a signed token for ``sub`` with ``role``, valid for ``ttl_s`` seconds.

        Raises:
            InvalidInput: Unknown role, empty subject or a non-positive lifetime.
        """
        if not sub:
            raise InvalidInput("subject must not be empty", field="sub")
        try:
            checked_role = Role(role)
        except ValueError as exc:
            allowed = ", ".join(r.value for r in Role)
            raise InvalidInput(f"role must be one of {allowed}", field="role") from exc
        ttl = self._settings.default_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise InvalidInput("ttl must be a positive number of seconds", field="ttl")
        now_s = self._clock.now_ms() // 1000
        claims: dict[str, Any] = {
            "sub": sub,
            "role": checked_role.value,
            "iat": now_s,
            "exp": now_s + ttl,
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
        }
        return jwt.encode(claims, self._secret, algorithm=self._settings.algorithm)

    def verify(self, token: str) -> Principal:
        """Return the principal a token names.

        Raises:
            Unauthenticated: The token is malformed, forged, expired or for another audience.
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._settings.algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                options={
                    "require": ["sub", "exp", "iat", "role"],
                    # Times are checked below against our Clock, not the machine's.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        self._check_times(claims)
        try:
            role = Role(claims["role"])
        except ValueError as exc:
            raise Unauthenticated("token names an unknown role") from exc
        return Principal(sub=str(claims["sub"]), role=role)

    def _check_times(self, claims: dict[str, Any]) -> None:
        """Reject tokens that expired, or were issued in the future, by our clock."""
        now_s = self._clock.now_ms() / 1000
        leeway = self._settings.leeway_s
        if _numeric_claim(claims, "exp") + leeway <= now_s:
            raise Unauthenticated("token has expired")
        if _numeric_claim(claims, "iat") - leeway > now_s:
            raise Unauthenticated("token was issued in the future (check the clocks)")
        if "nbf" in claims and _numeric_claim(claims, "nbf") - leeway > now_s:
            raise Unauthenticated("token is not valid yet")


def _numeric_claim(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"token claim '{name}' must be a number of seconds")
    return float(value)


def load_secret(settings: Settings) -> bytes:
    """Return the signing secret, creating one in the data directory if none is configured.

    Order: ``auth.secret``, then ``auth.secret_file``, then ``<data_dir>/jwt-secret``
    (created with mode 0600 on first use).

    Raises:
        ConfigurationError: A configured secret file cannot be read.
    """
    auth = settings.auth
    if auth.secret is not None:
        return auth.secret.get_secret_value().encode()
    if auth.secret_file is not None:
        try:
            return auth.secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read auth.secret_file: {exc}") from exc
    return _load_or_create(settings.ensure_data_dir() / SECRET_FILE_NAME)


def _load_or_create(path: Path) -> bytes:
    """Return the key in ``path``, creating it atomically if it does not exist.

    The key is written to a private temporary file first and then hard-linked
    into place, so a process starting at the same moment either sees no file
    or the whole key, never an empty one; if two race, both use the winner's.
    """
    if path.exists():
        return path.read_bytes().strip()
    fd, tmp = tempfile.mkstemp(prefix=".jwt-secret-", dir=path.parent)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; use its key
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the principal of the request's bearer token (401 if none).

    Async on purpose: verifying an HMAC is quick, and FastAPI would run a
    plain function in a worker thread, costing a thread hop per request.
    """
    tokens: TokenService = request.app.state.tokens
    return tokens.verify(_bearer_token(request))


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def require_roles(*roles: Role) -> Any:
    """Return a dependency admitting ``admin`` and the given roles; any valid token if none.

    Returns:
        A ``Depends`` object for a route's ``dependencies`` list or a parameter default.
    """
    admitted = frozenset((Role.ADMIN, *roles))

    async def check(principal: CurrentPrincipal) -> Principal:
        if roles and principal.role not in admitted:
            names = ", ".join(sorted(r.value for r in admitted))
            raise Forbidden(f"role '{principal.role.value}' may not do this (needs one of {names})")
        return principal

    return Depends(check)
