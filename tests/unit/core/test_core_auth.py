"""Unit tests for northpole.core.auth: TokenService and load_secret."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from northpole.core.auth import SECRET_FILE_NAME, Principal, Role, TokenService, load_secret
from northpole.core.clock import FakeClock
from northpole.core.errors import ConfigurationError, InvalidInput, Unauthenticated
from northpole.core.settings import AuthSettings, Settings

SECRET = b"auth-test-secret-0123456789abcdef"  # 33 bytes
START_MS = (
    1_767_225_600_000  # 2026-01-01T00:00:00Z: tokens are issued and checked at this fake time.
)
START_S = START_MS // 1000


def service(clock: FakeClock | None = None, secret: bytes = SECRET, **auth: Any) -> TokenService:
    """Return a TokenService on ``clock`` (default: FakeClock at START_MS)."""
    return TokenService(secret, AuthSettings(**auth), clock=clock or FakeClock(START_MS))


def claims(**overrides: Any) -> dict[str, Any]:
    """Return a complete, valid claim set, with ``overrides`` applied (None removes a claim)."""
    base: dict[str, Any] = {
        "sub": "alice",
        "role": "operator",
        "iat": START_S,
        "exp": START_S + 60,
        "iss": "northpole",
        "aud": "northpole",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# -- issue / verify ---------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_issue_verify_round_trip_for_each_role(role: Role) -> None:
    """A token issued for any role verifies to the same subject and role."""
    tokens = service()
    assert tokens.verify(tokens.issue(sub="alice", role=role)) == Principal("alice", role)


def test_issue_accepts_role_as_string() -> None:
    """issue takes a role given as its string value."""
    tokens = service()
    assert tokens.verify(tokens.issue(sub="w1", role="worker")).role is Role.WORKER


def test_issued_token_carries_standard_claims() -> None:
    """An issued token holds sub, role, iat, exp, iss and aud from settings and the clock."""
    tokens = service(issuer="np-test", audience="np-aud", default_ttl_s=120)
    token = tokens.issue(sub="bob", role=Role.ADMIN)
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert decoded == {
        "sub": "bob",
        "role": "admin",
        "iat": START_S,
        "exp": START_S + 120,
        "iss": "np-test",
        "aud": "np-aud",
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_issue_ttl_overrides_default() -> None:
    """An explicit ttl_s sets exp to iat + ttl_s."""
    decoded = jwt.decode(
        service().issue(sub="a", role=Role.WORKER, ttl_s=7), options={"verify_signature": False}
    )
    assert decoded["exp"] - decoded["iat"] == 7


def test_verify_honours_expiry_with_leeway() -> None:
    """A token stays valid until exp + leeway on the service's clock and is refused after."""
    clock = FakeClock(START_MS)
    tokens = service(clock, leeway_s=5)
    token = tokens.issue(sub="a", role=Role.OPERATOR, ttl_s=10)
    clock.advance(10_000 + 4_000)  # past exp, inside leeway
    assert tokens.verify(token).sub == "a"
    clock.advance(2_000)  # exp + 6 s
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify(token)


def test_verify_without_leeway_expires_right_after_exp() -> None:
    """With leeway 0 a token is valid just before exp and refused just after it."""
    clock = FakeClock(START_MS)
    tokens = service(clock, leeway_s=0)
    token = tokens.issue(sub="a", role=Role.OPERATOR, ttl_s=10)
    clock.advance(9_999)
    assert tokens.verify(token).role is Role.OPERATOR
    clock.advance(2)
    with pytest.raises(Unauthenticated):
        tokens.verify(token)


def test_verify_rejects_token_signed_with_other_secret() -> None:
    """A token signed with a different secret fails signature verification."""
    forged = service(secret=b"x" * 32).issue(sub="mallory", role=Role.ADMIN)
    with pytest.raises(Unauthenticated, match="Signature"):
        service().verify(forged)


def test_verify_rejects_tampered_payload() -> None:
    """Changing the payload of a signed token invalidates it."""
    tokens = service()
    header, _, signature = tokens.issue(sub="p", role=Role.PARTICIPANT).split(".")
    admin_payload = jwt.encode(claims(role="admin"), SECRET, algorithm="HS256").split(".")[1]
    with pytest.raises(Unauthenticated):
        tokens.verify(f"{header}.{admin_payload}.{signature}")


def test_verify_rejects_unsigned_token() -> None:
    """An ``alg: none`` token is refused."""
    unsigned = jwt.encode(claims(role="admin"), key=None, algorithm="none")
    with pytest.raises(Unauthenticated):
        service().verify(unsigned)


def test_verify_rejects_other_algorithm() -> None:
    """A token signed with the right key but an algorithm not configured is refused."""
    secret = b"k" * 64
    token = jwt.encode(claims(), secret, algorithm="HS512")
    with pytest.raises(Unauthenticated):
        service(secret=secret).verify(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "a.b", "....."])
def test_verify_rejects_garbage(garbage: str) -> None:
    """Strings that are not JWTs are refused with Unauthenticated."""
    with pytest.raises(Unauthenticated):
        service().verify(garbage)


def test_verify_rejects_wrong_issuer() -> None:
    """A token from another issuer is refused."""
    token = service(issuer="someone-else").issue(sub="a", role=Role.ADMIN)
    with pytest.raises(Unauthenticated, match="issuer"):
        service().verify(token)


def test_verify_rejects_wrong_audience() -> None:
    """A token for another audience is refused."""
    token = service(audience="elsewhere").issue(sub="a", role=Role.ADMIN)
    with pytest.raises(Unauthenticated, match="Audience"):
        service().verify(token)


@pytest.mark.parametrize("missing", ["sub", "role", "iat", "exp", "iss", "aud"])
def test_verify_rejects_missing_claim(missing: str) -> None:
    """A correctly signed token lacking any required claim is refused."""
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        service().verify(token)


@pytest.mark.parametrize("role", ["root", "ADMIN", "", 1, ["admin"]])
def test_verify_rejects_unknown_role_claim(role: Any) -> None:
    """A correctly signed token naming no known role is refused."""
    token = jwt.encode(claims(role=role), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="role"):
        service().verify(token)


def test_verify_rejects_non_numeric_exp() -> None:
    """A correctly signed token whose exp is not a number is refused as malformed."""
    token = jwt.encode(claims(exp="soon"), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        service().verify(token)


def test_verify_uses_injected_clock_for_issued_at() -> None:
    """A service whose clock is ahead of real time verifies the tokens it just issued."""
    tomorrow = FakeClock(int(time.time() * 1000) + 86_400_000)
    tokens = service(tomorrow)
    assert tokens.verify(tokens.issue(sub="a", role=Role.ADMIN)).sub == "a"


def test_token_service_rejects_short_secret() -> None:
    """A secret shorter than 32 bytes is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="32 bytes"):
        TokenService(b"x" * 31, AuthSettings())
    TokenService(b"x" * 32, AuthSettings())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sub": "a", "role": "root"}, "role"),
        ({"sub": "a", "role": ""}, "role"),
        ({"sub": "", "role": Role.ADMIN}, "sub"),
        ({"sub": "a", "role": Role.ADMIN, "ttl_s": 0}, "ttl"),
        ({"sub": "a", "role": Role.ADMIN, "ttl_s": -5}, "ttl"),
    ],
)
def test_issue_rejects_bad_input_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """issue raises InvalidInput naming role, sub or ttl for bad arguments."""
    with pytest.raises(InvalidInput) as caught:
        service().issue(**kwargs)
    assert caught.value.field == field
    assert caught.value.status_code == 422


# -- load_secret ------------------------------------------------------------------------


def test_load_secret_prefers_explicit_secret(tmp_path: Path) -> None:
    """auth.secret is used as is (before secret_file) and no file is created."""
    secret_file = tmp_path / "file-secret"
    secret_file.write_text("from-file-" + "f" * 32)
    settings = Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(secret=SecretStr("explicit-" + "e" * 32), secret_file=secret_file),
    )
    assert load_secret(settings) == b"explicit-" + b"e" * 32
    assert not (tmp_path / "data" / SECRET_FILE_NAME).exists()


def test_load_secret_reads_secret_file_stripped(tmp_path: Path) -> None:
    """auth.secret_file is read and surrounding whitespace is stripped."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("  file-secret-" + "s" * 32 + "\n")
    settings = Settings(data_dir=tmp_path, auth=AuthSettings(secret_file=secret_file))
    assert load_secret(settings) == b"file-secret-" + b"s" * 32


def test_load_secret_missing_secret_file_is_configuration_error(tmp_path: Path) -> None:
    """A configured secret_file that does not exist is a ConfigurationError."""
    settings = Settings(data_dir=tmp_path, auth=AuthSettings(secret_file=tmp_path / "nope"))
    with pytest.raises(ConfigurationError, match="secret_file"):
        load_secret(settings)


def test_load_secret_generates_private_file_and_reuses_it(tmp_path: Path) -> None:
    """With no secret configured, a 0600 key file is created in the data dir and reused."""
    data_dir = tmp_path / "fresh" / "data"
    settings = Settings(data_dir=data_dir)
    first = load_secret(settings)
    path = data_dir / SECRET_FILE_NAME
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64
    assert first == path.read_bytes().strip()
    assert load_secret(Settings(data_dir=data_dir)) == first
    tokens = TokenService(first, settings.auth, clock=FakeClock(START_MS))
    assert tokens.verify(tokens.issue(sub="a", role=Role.ADMIN)).role is Role.ADMIN


def test_load_secret_differs_between_data_dirs(tmp_path: Path) -> None:
    """Two data directories get two different generated secrets."""
    one = load_secret(Settings(data_dir=tmp_path / "one"))
    two = load_secret(Settings(data_dir=tmp_path / "two"))
    assert one != two
