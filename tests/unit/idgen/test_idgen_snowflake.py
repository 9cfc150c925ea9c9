"""Unit tests for northpole.idgen.snowflake: the pure Gift ID bit layout."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.core.errors import InvalidInput
from northpole.core.settings import DEFAULT_EPOCH_MS
from northpole.idgen.snowflake import (
    IDS_PER_MS,
    MAX_ID,
    MAX_IDS_PER_SECOND,
    MAX_SEQUENCE,
    MAX_TIMESTAMP,
    MAX_WORKSHOP_ID,
    DecodedId,
    check_workshop_id,
    decode,
    encode,
    parse_id,
)

elapsed_st = st.integers(min_value=0, max_value=2**41 - 1)
workshop_st = st.integers(min_value=0, max_value=1023)
sequence_st = st.integers(min_value=0, max_value=4095)
epoch_st = st.integers(min_value=0, max_value=2**45)
fields_st = st.tuples(elapsed_st, workshop_st, sequence_st)


def _outside(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers strictly below ``low`` or strictly above ``high``, near and far."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.sampled_from([low - 1, high + 1]),
    )


def test_layout_constants() -> None:
    """The layout constants describe 41/10/12 bits and a signed 64-bit ceiling."""
    assert MAX_TIMESTAMP == 2**41 - 1
    assert MAX_WORKSHOP_ID == 1023
    assert MAX_SEQUENCE == 4095
    assert IDS_PER_MS == 4096
    assert MAX_IDS_PER_SECOND == 4_096_000
    assert MAX_ID == 2**63 - 1


@settings(max_examples=200, deadline=None)
@given(elapsed=elapsed_st, workshop=workshop_st, sequence=sequence_st)
def test_decode_inverts_encode(elapsed: int, workshop: int, sequence: int) -> None:
    """decode(encode(fields)) gives back every field over the whole field ranges."""
    gift_id = encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    decoded = decode(gift_id, epoch_ms=0)
    assert decoded == DecodedId(
        id=gift_id, unix_ms=elapsed, workshop_id=workshop, sequence=sequence
    )


@settings(max_examples=200, deadline=None)
@given(elapsed=elapsed_st, workshop=workshop_st, sequence=sequence_st, epoch=epoch_st)
def test_decode_adds_epoch_to_unix_ms(
    elapsed: int, workshop: int, sequence: int, epoch: int
) -> None:
    """decode's unix_ms is the encoded elapsed time plus the given epoch."""
    gift_id = encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert decode(gift_id, epoch_ms=epoch).unix_ms == elapsed + epoch


@settings(max_examples=100, deadline=None)
@given(elapsed=elapsed_st, workshop=workshop_st, sequence=sequence_st)
def test_decode_default_epoch_is_2025(elapsed: int, workshop: int, sequence: int) -> None:
    """decode without an epoch adds DEFAULT_EPOCH_MS (2025-01-01) to the elapsed time."""
    gift_id = encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert DEFAULT_EPOCH_MS == 1_735_689_600_000
    assert decode(gift_id).unix_ms == elapsed + DEFAULT_EPOCH_MS


@settings(max_examples=200, deadline=None)
@given(elapsed=elapsed_st, workshop=workshop_st, sequence=sequence_st)
def test_encoded_ids_are_non_negative_signed_64_bit(
    elapsed: int, workshop: int, sequence: int
) -> None:
    """Every encoded ID lies in [0, 2**63 - 1]."""
    gift_id = encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert isinstance(gift_id, int)
    assert 0 <= gift_id <= 2**63 - 1


def test_encode_extremes() -> None:
    """The all-zero fields encode to 0 and the all-max fields encode to 2**63 - 1."""
    assert encode(elapsed_ms=0, workshop_id=0, sequence=0) == 0
    top = encode(elapsed_ms=MAX_TIMESTAMP, workshop_id=MAX_WORKSHOP_ID, sequence=MAX_SEQUENCE)
    assert top == MAX_ID


@settings(max_examples=200, deadline=None)
@given(a=fields_st, b=fields_st)
def test_id_order_follows_time_then_workshop_then_sequence(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    """IDs compare exactly like their (elapsed, workshop, sequence) tuples."""
    id_a = encode(elapsed_ms=a[0], workshop_id=a[1], sequence=a[2])
    id_b = encode(elapsed_ms=b[0], workshop_id=b[1], sequence=b[2])
    assert (id_a < id_b) == (a < b)
    assert (id_a == id_b) == (a == b)


@settings(max_examples=100, deadline=None)
@given(elapsed=_outside(0, MAX_TIMESTAMP), workshop=workshop_st, sequence=sequence_st)
def test_encode_rejects_out_of_range_timestamp(elapsed: int, workshop: int, sequence: int) -> None:
    """encode raises InvalidInput with field 'timestamp' for elapsed_ms outside 0..2**41-1."""
    with pytest.raises(InvalidInput) as info:
        encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert info.value.field == "timestamp"


@settings(max_examples=100, deadline=None)
@given(elapsed=elapsed_st, workshop=_outside(0, MAX_WORKSHOP_ID), sequence=sequence_st)
def test_encode_rejects_out_of_range_workshop(elapsed: int, workshop: int, sequence: int) -> None:
    """encode raises InvalidInput with field 'workshop_id' for workshop ids outside 0..1023."""
    with pytest.raises(InvalidInput) as info:
        encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert info.value.field == "workshop_id"


@settings(max_examples=100, deadline=None)
@given(elapsed=elapsed_st, workshop=workshop_st, sequence=_outside(0, MAX_SEQUENCE))
def test_encode_rejects_out_of_range_sequence(elapsed: int, workshop: int, sequence: int) -> None:
    """encode raises InvalidInput with field 'sequence' for sequences outside 0..4095."""
    with pytest.raises(InvalidInput) as info:
        encode(elapsed_ms=elapsed, workshop_id=workshop, sequence=sequence)
    assert info.value.field == "sequence"


@pytest.mark.parametrize("workshop", [-1, 1024, 10**6])
def test_check_workshop_id_rejects_out_of_range(workshop: int) -> None:
    """check_workshop_id raises InvalidInput with field 'workshop_id' outside 0..1023."""
    with pytest.raises(InvalidInput) as info:
        check_workshop_id(workshop)
    assert info.value.field == "workshop_id"


@pytest.mark.parametrize("workshop", [0, 1, 512, 1023])
def test_check_workshop_id_returns_valid_id(workshop: int) -> None:
    """check_workshop_id returns an in-range workshop id unchanged."""
    assert check_workshop_id(workshop) == workshop


@settings(max_examples=100, deadline=None)
@given(gift_id=st.integers(max_value=-1))
def test_decode_rejects_negative(gift_id: int) -> None:
    """decode raises InvalidInput with field 'id' for negative integers."""
    with pytest.raises(InvalidInput) as info:
        decode(gift_id)
    assert info.value.field == "id"


@settings(max_examples=100, deadline=None)
@given(gift_id=st.integers(min_value=2**63))
def test_decode_rejects_too_large(gift_id: int) -> None:
    """decode raises InvalidInput with field 'id' for integers of 2**63 and above."""
    with pytest.raises(InvalidInput) as info:
        decode(gift_id)
    assert info.value.field == "id"


@pytest.mark.parametrize(
    "value", [True, False, 1.0, 1.5, "1", b"1", None, Decimal(1), [1]], ids=repr
)
def test_decode_rejects_bool_and_non_int(value: Any) -> None:
    """decode raises InvalidInput with field 'id' for bools and non-integers."""
    with pytest.raises(InvalidInput) as info:
        decode(value)
    assert info.value.field == "id"


def test_decode_accepts_bounds() -> None:
    """decode accepts 0 and 2**63 - 1, the two ends of the valid range."""
    assert decode(0, epoch_ms=0) == DecodedId(id=0, unix_ms=0, workshop_id=0, sequence=0)
    top = decode(MAX_ID, epoch_ms=0)
    assert (top.unix_ms, top.workshop_id, top.sequence) == (
        MAX_TIMESTAMP,
        MAX_WORKSHOP_ID,
        MAX_SEQUENCE,
    )


@settings(max_examples=200, deadline=None)
@given(gift_id=st.integers(min_value=0, max_value=MAX_ID))
def test_parse_id_accepts_decimal_strings(gift_id: int) -> None:
    """parse_id returns the integer of any decimal string from 0 to 2**63 - 1."""
    assert parse_id(str(gift_id)) == gift_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("42", 42), ("9223372036854775807", MAX_ID), ("007", 7)],
)
def test_parse_id_examples(text: str, expected: int) -> None:
    """parse_id parses typical decimal strings, including the maximum and leading zeros."""
    assert parse_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "-1",
        "",
        "1.5",
        "9223372036854775808",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() but not ASCII
        "1" * 25,
        "+1",
        "1e3",
        "0x10",
        "1_000",
        "\uff11\uff12",  # FULLWIDTH DIGITS ONE TWO
        "\u00b2",  # SUPERSCRIPT TWO
        " ",
    ],
    ids=repr,
)
def test_parse_id_rejects_non_decimal_or_out_of_range(text: str) -> None:
    """parse_id raises InvalidInput with field 'id' for anything not a decimal 0..2**63-1."""
    with pytest.raises(InvalidInput) as info:
        parse_id(text)
    assert info.value.field == "id"


@settings(max_examples=100, deadline=None)
@given(gift_id=st.integers(min_value=MAX_ID + 1, max_value=10**30))
def test_parse_id_rejects_values_past_max(gift_id: int) -> None:
    """parse_id raises InvalidInput with field 'id' for decimal values above 2**63 - 1."""
    with pytest.raises(InvalidInput) as info:
        parse_id(str(gift_id))
    assert info.value.field == "id"
