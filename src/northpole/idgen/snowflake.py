"""The Gift ID bit layout: pure encode and decode, no state and no I/O.

::

    | 1 bit unused (0) | 41 bits ms since epoch | 10 bits workshop | 12 bits sequence |

Because the top bit is always 0, every Gift ID is a positive signed 64-bit
integer, and IDs sort by time first.
"""

from __future__ import annotations

from dataclasses import dataclass

from northpole.core.errors import InvalidInput
from northpole.core.settings import DEFAULT_EPOCH_MS

TIMESTAMP_BITS = 41
WORKSHOP_BITS = 10
SEQUENCE_BITS = 12

MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1
MAX_WORKSHOP_ID = (1 << WORKSHOP_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
#: IDs one workshop can issue in one millisecond.
IDS_PER_MS = MAX_SEQUENCE + 1
#: The format's ceiling for one workshop: 4,096,000 IDs per second.
MAX_IDS_PER_SECOND = IDS_PER_MS * 1000

WORKSHOP_SHIFT = SEQUENCE_BITS
TIMESTAMP_SHIFT = SEQUENCE_BITS + WORKSHOP_BITS
MAX_ID = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class DecodedId:
    """The parts of a Gift ID.

    Attributes:
        id: The ID itself.
        unix_ms: When it was issued, in Unix milliseconds.
        workshop_id: The generator instance that issued it (0-1023).
        sequence: Its position within that millisecond (0-4095).
    """

    id: int
    unix_ms: int
    workshop_id: int
    sequence: int


def check_workshop_id(workshop_id: int) -> int:
    """Return ``workshop_id`` if it fits in 10 bits, else raise InvalidInput."""
    if not 0 <= workshop_id <= MAX_WORKSHOP_ID:
        raise InvalidInput(
            f"workshop id must be between 0 and {MAX_WORKSHOP_ID}, got {workshop_id}",
            field="workshop_id",
        )
    return workshop_id


def encode(*, elapsed_ms: int, workshop_id: int, sequence: int) -> int:
    """Pack the three fields into an ID.

    Args:
        elapsed_ms: Milliseconds since the epoch (0 to 2**41 - 1).
        workshop_id: 0 to 1023.
        sequence: 0 to 4095.

    Raises:
        InvalidInput: A field is out of its range.
    """
    if not 0 <= elapsed_ms <= MAX_TIMESTAMP:
        raise InvalidInput(
            f"timestamp must be between 0 and {MAX_TIMESTAMP} ms after the epoch",
            field="timestamp",
        )
    check_workshop_id(workshop_id)
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidInput(f"sequence must be between 0 and {MAX_SEQUENCE}", field="sequence")
    return (elapsed_ms << TIMESTAMP_SHIFT) | (workshop_id << WORKSHOP_SHIFT) | sequence


def decode(gift_id: int, *, epoch_ms: int = DEFAULT_EPOCH_MS) -> DecodedId:
    """Split a Gift ID into its timestamp, workshop id and sequence.

    Args:
        gift_id: A non-negative signed 64-bit integer.
        epoch_ms: The epoch the ID was issued against (Unix ms).

    Raises:
        InvalidInput: ``gift_id`` is negative or does not fit in a signed 64-bit integer.
    """
    if isinstance(gift_id, bool) or not isinstance(gift_id, int):
        raise InvalidInput("id must be an integer", field="id")
    if not 0 <= gift_id <= MAX_ID:
        raise InvalidInput(f"id must be between 0 and {MAX_ID}", field="id")
    return DecodedId(
        id=gift_id,
        unix_ms=(gift_id >> TIMESTAMP_SHIFT) + epoch_ms,
        workshop_id=(gift_id >> WORKSHOP_SHIFT) & MAX_WORKSHOP_ID,
        sequence=gift_id & MAX_SEQUENCE,
    )


def parse_id(text: str) -> int:
    """Parse a decimal Gift ID as sent on the wire (IDs travel as strings).

    Raises:
        InvalidInput: ``text`` is not a decimal non-negative signed 64-bit integer.
    """
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 19:
        raise InvalidInput(f"id must be a decimal integer from 0 to {MAX_ID}", field="id")
    value = int(stripped)
    if value > MAX_ID:
        raise InvalidInput(f"id must be between 0 and {MAX_ID}", field="id")
    return value
