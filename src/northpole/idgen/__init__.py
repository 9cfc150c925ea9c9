"""The Gift ID generator: Snowflake IDs, 41-bit ms timestamp, 10-bit workshop, 12-bit sequence.

Public API::

    from northpole.idgen import IdGenerator, decode

    gen = IdGenerator(workshop_id=7)
    gift_id = gen.next_id()
    batch = gen.next_ids(4096)
    parts = decode(gift_id)   # DecodedId(id, unix_ms, workshop_id, sequence)
"""

from northpole.idgen.generator import IdGenerator
from northpole.idgen.snowflake import (
    MAX_IDS_PER_SECOND,
    MAX_SEQUENCE,
    MAX_WORKSHOP_ID,
    DecodedId,
    decode,
    encode,
    parse_id,
)
from northpole.idgen.watermark import FileWatermark, MemoryWatermark, Watermark

__all__ = [
    "MAX_IDS_PER_SECOND",
    "MAX_SEQUENCE",
    "MAX_WORKSHOP_ID",
    "DecodedId",
    "FileWatermark",
    "IdGenerator",
    "MemoryWatermark",
    "Watermark",
    "decode",
    "encode",
    "parse_id",
]
