"""Privacy: after a real match, no plaintext pair is in the store, the logs, metrics or answers.

Participant ids are long random strings, so a scan for one is meaningful:
nothing in a stored row, or in a log entry, may hold a giver's id next to
their receiver's. The matcher is the real one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
from prometheus_client.exposition import generate_latest
from structlog.testing import capture_logs

from northpole.exchange import keys
from northpole.exchange.crypto import open_match
from northpole.exchange.model import Phase, Rules

from exchange_service_support import (  # isort: skip
    ORGANIZER,
    Harness,
    as_participant,
    new_exchange,
    running_service,
)

N = 12


async def commit_exchange(h: Harness, rules: Rules | None = None) -> tuple[str, dict[str, str]]:
    """Register N people (two regions' worth), match for real; return the id and the pairs."""
    exchange_id = await new_exchange(h.service, rules=rules)
    people = [h.people.make(budget=10.0 + i) for i in range(N)]
    await h.service.register(exchange_id, people, ORGANIZER, batch=True)
    record = await h.service.match(exchange_id, ORGANIZER)
    assert record.phase is Phase.COMMITTED
    pairs = {}
    for person in people:
        _, sealed = await h.service.sealed_match(exchange_id, person.id, as_participant(person.id))
        pairs[person.id] = open_match(sealed.sealed, h.people.keys[person.id]).receiver
    return exchange_id, pairs


def rows(path: Path) -> list[bytes]:
    """Every row of the store file's tables, as the raw bytes of key and value."""
    conn = sqlite3.connect(path)
    try:
        found = []
        for key, value in conn.execute("SELECT key, value FROM kv"):
            found.append(key.encode() + b"\x00" + bytes(value))
        for name, value in conn.execute("SELECT name, value FROM meta"):
            found.append(f"{name}\x00{value}".encode())
        return found
    finally:
        conn.close()


async def test_no_stored_row_holds_a_giver_next_to_their_receiver(tmp_path: Path) -> None:
    """Scan every row of the SQLite file: no pair appears together in one row."""
    async with running_service(tmp_path, matcher=None) as h:
        _, pairs = await commit_exchange(h)
        path = h.path
    stored = rows(path)
    assert len(stored) > N
    for giver, receiver in pairs.items():
        assert any(giver.encode() in row for row in stored)  # the scan does see ids
        together = [row for row in stored if giver.encode() in row and receiver.encode() in row]
        assert together == []


async def test_the_raw_database_files_hold_no_plaintext_payload(tmp_path: Path) -> None:
    """The raw bytes of the database and its WAL never hold a match payload's field names."""
    async with running_service(tmp_path, matcher=None) as h:
        await commit_exchange(h)
        path = h.path
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        raw = b"".join(p.read_bytes() for p in files)
    assert b'"sealed"' in raw  # the stored matches are there, sealed
    assert b'"receiver"' not in raw
    assert b'"salt"' not in raw


async def test_logs_metrics_and_answers_never_pair_a_giver_with_a_receiver(
    tmp_path: Path,
) -> None:
    """Captured log entries and the metrics text hold no pair; the record holds no id at all."""
    async with running_service(tmp_path, matcher=None) as h:
        with capture_logs() as logs:
            exchange_id, pairs = await commit_exchange(h)
        metrics_text = generate_latest(h.registry).decode()
        record = await h.service.get(exchange_id, ORGANIZER)
    lines = [orjson.dumps(entry, default=str).decode() for entry in logs]
    assert any("exchange committed" in line for line in lines)
    for giver, receiver in pairs.items():
        assert not any(giver in line and receiver in line for line in lines)
        assert giver not in metrics_text and receiver not in metrics_text
    encoded = keys.encode_state(record).decode()
    assert not any(pid in encoded for pid in pairs)


async def test_the_published_event_carries_no_participant(tmp_path: Path) -> None:
    """``exchange.committed`` holds the exchange id, year and count, and no participant id."""
    async with running_service(tmp_path, matcher=None) as h:
        subscription = h.bus.subscribe(keys.EXCHANGE_COMMITTED)
        _, pairs = await commit_exchange(h)
        _, event = await subscription.get(timeout=1)
    text = repr(event)
    assert not any(pid in text for pid in pairs)
    assert f"count={N}" in text
