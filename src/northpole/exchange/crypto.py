"""Sealed matches and their commitments: only the giver can read whom they give to.

A giver's match is sealed to the giver's X25519 public key with libsodium's
sealed box (PyNaCl :class:`~nacl.public.SealedBox`: an ephemeral key pair,
X25519 + XSalsa20-Poly1305). Only the sealed form is stored; the server drops
the plaintext as soon as every match is sealed.

**The sealed payload** (what :func:`open_match` returns) is UTF-8 JSON::

    {"v": 1, "exchange_id": "...", "giver": "...", "receiver": "...", "salt": "<base64, 32 bytes>"}

**The commitment** stored beside it (and visible to everybody in the
exchange) is the lowercase hex SHA-256 of::

    salt (32 bytes) || u32be(len(e)) || e || u32be(len(g)) || g || u32be(len(r)) || r

with ``e``, ``g``, ``r`` the UTF-8 bytes of the exchange id, giver id and
receiver id. The random salt lives only inside the sealed box, so the
commitment says nothing about the receiver until the giver reveals the
payload; then anyone can recompute it (:func:`verify_commitment`) and see
that the match revealed is the one committed.

Keys travel as standard base64 of their 32 raw bytes. A private key file
(:func:`write_private_key`) holds that base64 on one line, mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import orjson
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from northpole.core.errors import InvalidInput

#: X25519 keys and the commitment salt are 32 bytes.
KEY_BYTES = 32
SALT_BYTES = 32
#: Version of the sealed payload format.
PAYLOAD_VERSION = 1


class SealError(InvalidInput):
    """A sealed match that this key cannot open, or whose content is malformed."""

    code = "unsealable"


@dataclass(frozen=True, slots=True)
class SealedMatch:
    """What is stored for one giver: the sealed payload and its commitment.

    Attributes:
        giver: The giver's id (the key of the record; not secret).
        sealed: The sealed box, standard base64.
        commitment: Lowercase hex SHA-256 (see the module docstring).
    """

    giver: str
    sealed: str
    commitment: str


@dataclass(frozen=True, slots=True)
class RevealedMatch:
    """An opened sealed match."""

    exchange_id: str
    giver: str
    receiver: str
    salt: bytes


def b64encode(raw: bytes) -> str:
    """Return standard base64 text for ``raw``."""
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Decode strict standard base64 (``binascii.Error`` on anything else)."""
    return base64.b64decode(text.strip().encode("ascii"), validate=True)


def parse_public_key(text: str, *, field: str = "public_key") -> bytes:
    """Return the 32 raw bytes of a base64 X25519 public key.

    Raises:
        InvalidInput: Not base64, or not 32 bytes once decoded (``field`` names it).
    """
    try:
        raw = _b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"{field} must be standard base64 of a 32-byte X25519 key", field=field
        ) from exc
    if len(raw) != KEY_BYTES:
        raise InvalidInput(f"{field} must decode to {KEY_BYTES} bytes, not {len(raw)}", field=field)
    return raw


def new_private_key() -> PrivateKey:
    """Return a fresh X25519 private key."""
    return PrivateKey.generate()


def public_key_b64(private_key: PrivateKey) -> str:
    """Return the base64 public key of ``private_key``."""
    return b64encode(bytes(private_key.public_key))


def write_private_key(path: Path, private_key: PrivateKey) -> None:
    """Write ``private_key`` as one base64 line to a new file of mode 0600.

    Raises:
        InvalidInput: ``path`` exists already (a key is never overwritten).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise InvalidInput(f"{path} exists; refusing to overwrite a key", field="out") from exc
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(b64encode(bytes(private_key)) + "\n")


def read_private_key(path: Path) -> PrivateKey:
    """Read a private key file written by :func:`write_private_key`.

    Raises:
        InvalidInput: The file cannot be read or holds no 32-byte base64 key (field ``key``).
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read key file {path}: {exc}", field="key") from exc
    try:
        raw = _b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{path} does not hold a base64 key", field="key") from exc
    if len(raw) != KEY_BYTES:
        raise InvalidInput(f"{path} does not hold a {KEY_BYTES}-byte key", field="key")
    return PrivateKey(raw)


def commitment(salt: bytes, exchange_id: str, giver: str, receiver: str) -> str:
    """Return the hex SHA-256 commitment to one match (see the module docstring)."""
    digest = hashlib.sha256(salt)
    for part in (exchange_id, giver, receiver):
        data = part.encode()
        digest.update(struct.pack(">I", len(data)))
        digest.update(data)
    return digest.hexdigest()


def seal_match(
    exchange_id: str, giver: str, receiver: str, public_key: bytes, *, salt: bytes | None = None
) -> SealedMatch:
    """Seal ``giver -> receiver`` to the giver's public key and commit to it.

    Args:
        exchange_id: The exchange.
        giver: Who gives (and alone can open the box).
        receiver: Whom they give to.
        public_key: The giver's 32-byte X25519 public key.
        salt: The commitment salt; random (32 bytes) unless given.
    """
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    payload = orjson.dumps(
        {
            "v": PAYLOAD_VERSION,
            "exchange_id": exchange_id,
            "giver": giver,
            "receiver": receiver,
            "salt": b64encode(salt),
        }
    )
    sealed = SealedBox(PublicKey(public_key)).encrypt(payload)
    return SealedMatch(
        giver=giver,
        sealed=b64encode(sealed),
        commitment=commitment(salt, exchange_id, giver, receiver),
    )


def open_match(sealed: str, private_key: PrivateKey) -> RevealedMatch:
    """Open a sealed match with the giver's private key.

    Raises:
        SealError: Not this key's box, tampered with, or not a match payload.
    """
    try:
        plain = SealedBox(private_key).decrypt(_b64decode(sealed))
    except (binascii.Error, ValueError, CryptoError) as exc:
        raise SealError(
            "this key cannot open the sealed match (wrong key, or the data was altered)",
            field="key",
        ) from exc
    try:
        data = orjson.loads(plain)
        if data["v"] != PAYLOAD_VERSION:
            raise ValueError(f"payload version {data['v']!r}")
        salt = _b64decode(data["salt"])
        if len(salt) != SALT_BYTES:
            raise ValueError("salt length")
        return RevealedMatch(
            exchange_id=str(data["exchange_id"]),
            giver=str(data["giver"]),
            receiver=str(data["receiver"]),
            salt=salt,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise SealError("the sealed match does not hold a valid payload", field="sealed") from exc


def verify_commitment(revealed: RevealedMatch, expected: str) -> bool:
    """Whether ``revealed`` is the match that ``expected`` commits to."""
    actual = commitment(revealed.salt, revealed.exchange_id, revealed.giver, revealed.receiver)
    return hmac.compare_digest(actual, expected.strip().lower())


def commitment_root(commitments: dict[str, str]) -> str:
    """Return one hex SHA-256 over every giver's commitment (sorted by giver).

    Publishing it pins the whole committed matching: the list of commitments
    (``GET .../commitments``) must hash to it.
    """
    digest = hashlib.sha256()
    for giver in sorted(commitments):
        line = f"{giver}\t{commitments[giver]}\n".encode()
        digest.update(line)
    return digest.hexdigest()
