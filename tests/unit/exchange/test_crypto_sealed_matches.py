"""Sealed matches: round trip, wrong keys, commitments, tampering, key files and key parsing."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import orjson
import pytest
from nacl.public import PrivateKey, PublicKey, SealedBox

from northpole.core.errors import InvalidInput
from northpole.exchange.crypto import (
    SealedMatch,
    SealError,
    commitment,
    commitment_root,
    new_private_key,
    open_match,
    parse_public_key,
    public_key_b64,
    read_private_key,
    seal_match,
    verify_commitment,
    write_private_key,
)

EXCHANGE = "1234567890123"
GIVER = "giver-9f2c1e7a"
RECEIVER = "receiver-5b8d0c3f"


@pytest.fixture
def key() -> PrivateKey:
    """The giver's private key."""
    return new_private_key()


def sealed_for(key: PrivateKey, receiver: str = RECEIVER, salt: bytes | None = None) -> SealedMatch:
    """Seal GIVER -> receiver to ``key``'s public half."""
    return seal_match(EXCHANGE, GIVER, receiver, bytes(key.public_key), salt=salt)


def test_the_giver_opens_their_sealed_match(key: PrivateKey) -> None:
    """Sealing then opening with the giver's key returns the exchange, giver and receiver."""
    revealed = open_match(sealed_for(key).sealed, key)
    assert (revealed.exchange_id, revealed.giver, revealed.receiver) == (EXCHANGE, GIVER, RECEIVER)
    assert len(revealed.salt) == 32


def test_the_sealed_form_does_not_contain_the_receiver(key: PrivateKey) -> None:
    """Neither the sealed box nor the commitment carries the receiver id in clear."""
    match = sealed_for(key)
    raw = base64.b64decode(match.sealed)
    assert RECEIVER.encode() not in raw
    assert RECEIVER not in match.sealed and RECEIVER not in match.commitment


def test_another_key_cannot_open_the_match(key: PrivateKey) -> None:
    """A different private key (the organizer's, say) gets SealError, not the payload."""
    with pytest.raises(SealError) as caught:
        open_match(sealed_for(key).sealed, new_private_key())
    assert caught.value.field == "key"


def test_the_commitment_verifies_after_opening(key: PrivateKey) -> None:
    """The revealed payload hashes to the stored commitment."""
    match = sealed_for(key)
    assert verify_commitment(open_match(match.sealed, key), match.commitment)


def test_the_commitment_is_salted_and_binds_every_field() -> None:
    """Changing the salt, exchange, giver or receiver changes the commitment."""
    salt = bytes(range(32))
    base = commitment(salt, EXCHANGE, GIVER, RECEIVER)
    assert base != commitment(bytes(32), EXCHANGE, GIVER, RECEIVER)
    assert base != commitment(salt, "1", GIVER, RECEIVER)
    assert base != commitment(salt, EXCHANGE, "someone", RECEIVER)
    assert base != commitment(salt, EXCHANGE, GIVER, "someone-else")
    # Length prefixes: moving a character across the field boundary changes the hash.
    assert commitment(salt, "e", "ab", "c") != commitment(salt, "e", "a", "bc")


def test_the_commitment_has_the_documented_form() -> None:
    """sha256(salt || u32be len || exchange || u32be len || giver || u32be len || receiver)."""
    import hashlib
    import struct

    salt = b"s" * 32
    data = salt
    for part in (EXCHANGE, GIVER, RECEIVER):
        data += struct.pack(">I", len(part)) + part.encode()
    assert commitment(salt, EXCHANGE, GIVER, RECEIVER) == hashlib.sha256(data).hexdigest()


def test_a_revealed_match_for_another_receiver_fails_the_commitment(key: PrivateKey) -> None:
    """Claiming a different receiver, with the real salt, does not verify."""
    match = sealed_for(key)
    revealed = open_match(match.sealed, key)
    lie = type(revealed)(revealed.exchange_id, revealed.giver, "someone-else", revealed.salt)
    assert not verify_commitment(lie, match.commitment)


def test_a_tampered_box_cannot_be_opened(key: PrivateKey) -> None:
    """Flipping one bit of the sealed box makes it fail authentication."""
    raw = bytearray(base64.b64decode(sealed_for(key).sealed))
    raw[-1] ^= 0x01
    with pytest.raises(SealError):
        open_match(base64.b64encode(bytes(raw)).decode(), key)


def test_a_swapped_box_fails_the_commitment(key: PrivateKey) -> None:
    """A box for another receiver opens, but does not match the first box's commitment."""
    first = sealed_for(key)
    second = sealed_for(key, receiver="other-receiver")
    assert not verify_commitment(open_match(second.sealed, key), first.commitment)


def test_a_box_that_is_not_base64_is_refused(key: PrivateKey) -> None:
    """Garbage instead of a box is SealError."""
    with pytest.raises(SealError):
        open_match("not base64 at all!", key)


def test_a_box_with_a_foreign_payload_is_refused(key: PrivateKey) -> None:
    """A valid box whose content is not a match payload is SealError naming ``sealed``."""
    box = SealedBox(PublicKey(bytes(key.public_key))).encrypt(orjson.dumps({"v": 2}))
    with pytest.raises(SealError) as caught:
        open_match(base64.b64encode(box).decode(), key)
    assert caught.value.field == "sealed"


def test_a_fixed_salt_is_what_the_box_carries(key: PrivateKey) -> None:
    """The salt inside the box is the one the commitment was made with."""
    salt = os.urandom(32)
    revealed = open_match(sealed_for(key, salt=salt).sealed, key)
    assert revealed.salt == salt


def test_two_seals_of_the_same_match_differ(key: PrivateKey) -> None:
    """Fresh salts and ephemeral keys: equal matches do not give equal records."""
    a, b = sealed_for(key), sealed_for(key)
    assert a.sealed != b.sealed
    assert a.commitment != b.commitment


@pytest.mark.parametrize(
    "text",
    ["", "!!!!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_malformed_public_keys_name_the_field(text: str) -> None:
    """Not base64, or not 32 bytes: InvalidInput naming the field."""
    with pytest.raises(InvalidInput) as caught:
        parse_public_key(text, field="participants.2.public_key")
    assert caught.value.field == "participants.2.public_key"


def test_a_valid_public_key_parses_to_32_bytes(key: PrivateKey) -> None:
    """The base64 of a public key decodes to its raw bytes."""
    assert parse_public_key(public_key_b64(key)) == bytes(key.public_key)


def test_key_file_round_trip_with_mode_0600(tmp_path: Path, key: PrivateKey) -> None:
    """A written key file is private to its owner and reads back as the same key."""
    path = tmp_path / "santa.key"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(read_private_key(path)) == bytes(key)


def test_an_existing_key_file_is_never_overwritten(tmp_path: Path, key: PrivateKey) -> None:
    """Writing over an existing file is refused and leaves it untouched."""
    path = tmp_path / "santa.key"
    path.write_text("precious\n")
    with pytest.raises(InvalidInput):
        write_private_key(path, key)
    assert path.read_text() == "precious\n"


def test_a_bad_key_file_names_the_key_option(tmp_path: Path) -> None:
    """A missing file or one without a 32-byte key is InvalidInput on ``key``."""
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"k" * 16).decode())
    for path in (tmp_path / "missing.key", short):
        with pytest.raises(InvalidInput) as caught:
            read_private_key(path)
        assert caught.value.field == "key"


def test_the_commitment_root_depends_on_every_commitment() -> None:
    """The root is order-independent and changes when any commitment changes."""
    a = commitment_root({"x": "1" * 64, "y": "2" * 64})
    assert a == commitment_root({"y": "2" * 64, "x": "1" * 64})
    assert a != commitment_root({"x": "1" * 64, "y": "3" * 64})
