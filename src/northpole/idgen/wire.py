"""Serialise Gift IDs for the HTTP API without one ``str()`` call per ID.

IDs travel as decimal strings. A batch is a few runs of consecutive integers
(one run per millisecond), and consecutive integers share all but their last
four digits within each block of 10,000, so each block is written as its
shared prefix joined with a precomputed table of four-digit suffixes. This is
about ten times faster than ``orjson.dumps({"ids": list(map(str, ids))})`` for
4,096 IDs, which was most of the cost of a batch request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_BLOCK = 10_000
_SUFFIXES = tuple(f"{i:04d}" for i in range(_BLOCK))
_SEP = '","'


def _segments(run: range) -> Iterator[str]:
    """Yield the run's IDs as decimal strings joined by ``","``, one block at a time."""
    start, stop = run.start, run.stop
    while start < stop:
        block = start // _BLOCK
        end = min(stop, (block + 1) * _BLOCK)
        if block == 0:  # no shared prefix: the numbers have fewer than five digits
            yield _SEP.join(map(str, range(start, end)))
        else:
            prefix = str(block)
            suffixes = _SUFFIXES[start - block * _BLOCK : end - block * _BLOCK]
            yield prefix + (_SEP + prefix).join(suffixes)
        start = end


def ids_json(runs: Iterable[range]) -> bytes:
    """Return ``{"ids":["...", ...]}`` for the IDs in ``runs`` (ranges with step 1), in order."""
    body = _SEP.join(segment for run in runs for segment in _segments(run))
    if not body:
        return b'{"ids":[]}'
    return ('{"ids":["' + body + '"]}').encode("ascii")
