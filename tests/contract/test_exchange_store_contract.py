"""The ExchangeStore contract: etcd-shaped get, range, revisions and atomic transactions.

Runs once per implementation in ``exchange_fixtures.BACKENDS``.
"""

from __future__ import annotations

import asyncio

import pytest
from exchange_fixtures import ExchangeBackend, exchange_backend, kv

from northpole.core.errors import Unavailable
from northpole.exchange.sqlite_store import prefix_end
from northpole.exchange.store import Compare, Delete, ExchangeStore, Put

__all__ = ["exchange_backend", "kv"]


async def put(store: ExchangeStore, key: str, value: bytes = b"v") -> int:
    """Put one key unconditionally; return the new revision."""
    result = await store.txn([], [Put(key, value)])
    assert result.succeeded
    return result.revision


async def test_get_of_a_missing_key_is_none(kv: ExchangeStore) -> None:
    """A key never written reads as None."""
    assert await kv.get("/exchanges/2026/1/state") is None


async def test_a_new_store_is_at_revision_zero(kv: ExchangeStore) -> None:
    """Nothing written yet: revision 0."""
    assert await kv.revision() == 0


async def test_put_then_get_returns_value_and_revisions(kv: ExchangeStore) -> None:
    """A put key reads back with create and mod revision equal to the write's revision."""
    revision = await put(kv, "/a", b'{"x": 1}')
    got = await kv.get("/a")
    assert got is not None
    assert (got.key, got.value) == ("/a", b'{"x": 1}')
    assert got.create_revision == got.mod_revision == revision == await kv.revision()


async def test_each_successful_transaction_adds_one_revision(kv: ExchangeStore) -> None:
    """Revisions count transactions, not operations."""
    first = await put(kv, "/a")
    result = await kv.txn([], [Put("/b", b"1"), Put("/c", b"2"), Delete("/a")])
    assert result.succeeded
    assert result.revision == first + 1
    b, c = await kv.get("/b"), await kv.get("/c")
    assert b is not None and c is not None
    assert b.mod_revision == c.mod_revision == first + 1


async def test_update_keeps_create_revision_and_moves_mod_revision(kv: ExchangeStore) -> None:
    """Overwriting a key keeps when it was created and records when it changed."""
    created = await put(kv, "/a", b"1")
    changed = await put(kv, "/a", b"2")
    got = await kv.get("/a")
    assert got is not None
    assert (got.value, got.create_revision, got.mod_revision) == (b"2", created, changed)


async def test_compare_zero_holds_only_for_an_absent_key(kv: ExchangeStore) -> None:
    """mod_revision 0 means "does not exist": create-if-absent."""
    assert (await kv.txn([Compare("/a", 0)], [Put("/a", b"first")])).succeeded
    again = await kv.txn([Compare("/a", 0)], [Put("/a", b"second")])
    assert not again.succeeded
    got = await kv.get("/a")
    assert got is not None and got.value == b"first"


async def test_compare_on_mod_revision_guards_the_write(kv: ExchangeStore) -> None:
    """A write conditioned on an old revision fails once the key has moved on."""
    first = await put(kv, "/state", b"REGISTRATION")
    assert (await kv.txn([Compare("/state", first)], [Put("/state", b"MATCHING")])).succeeded
    stale = await kv.txn([Compare("/state", first)], [Put("/state", b"COMMITTED")])
    assert not stale.succeeded
    got = await kv.get("/state")
    assert got is not None and got.value == b"MATCHING"


async def test_a_failed_transaction_changes_nothing(kv: ExchangeStore) -> None:
    """When one compare fails, no put or delete of the transaction applies."""
    revision = await put(kv, "/keep", b"old")
    result = await kv.txn(
        [Compare("/keep", revision), Compare("/missing", 5)],
        [Put("/keep", b"new"), Put("/other", b"x"), Delete("/keep")],
    )
    assert not result.succeeded
    assert result.revision == revision == await kv.revision()
    got = await kv.get("/keep")
    assert got is not None and got.value == b"old"
    assert await kv.get("/other") is None


async def test_delete_removes_and_missing_delete_is_fine(kv: ExchangeStore) -> None:
    """Deleting a key removes it; deleting an absent key is not an error."""
    await put(kv, "/a")
    assert (await kv.txn([], [Delete("/a"), Delete("/never")])).succeeded
    assert await kv.get("/a") is None


async def test_the_last_operation_on_a_key_wins(kv: ExchangeStore) -> None:
    """Two operations on one key in one transaction: the later one counts."""
    await kv.txn([], [Put("/a", b"1"), Put("/a", b"2")])
    got = await kv.get("/a")
    assert got is not None and got.value == b"2"
    await kv.txn([], [Put("/a", b"3"), Delete("/a")])
    assert await kv.get("/a") is None


async def test_range_returns_only_keys_under_the_prefix_in_order(kv: ExchangeStore) -> None:
    """A prefix range excludes siblings whose names merely start alike."""
    for key in ["/e/2026/1/participants/b", "/e/2026/1/participants/a", "/e/2026/10/state"]:
        await put(kv, key)
    await put(kv, "/e/2026/1/participantsX")
    await put(kv, "/e/2026/1/state")
    result = await kv.range("/e/2026/1/participants/")
    assert [r.key for r in result.kvs] == [
        "/e/2026/1/participants/a",
        "/e/2026/1/participants/b",
    ]
    assert result.revision == await kv.revision()


async def test_range_with_a_limit_returns_the_first_keys(kv: ExchangeStore) -> None:
    """``limit`` caps the answer, keeping key order."""
    for name in "dcba":
        await put(kv, f"/p/{name}")
    assert [r.key for r in (await kv.range("/p/", limit=2)).kvs] == ["/p/a", "/p/b"]


async def test_range_of_the_empty_prefix_returns_everything(kv: ExchangeStore) -> None:
    """The empty prefix covers every key."""
    await put(kv, "/a")
    await put(kv, "\U0010ffff")
    assert [r.key for r in (await kv.range("")).kvs] == ["/a", "\U0010ffff"]


async def test_range_orders_non_ascii_keys_by_their_utf8_bytes(kv: ExchangeStore) -> None:
    """Keys order as their UTF-8 bytes, and a non-ASCII prefix ranges correctly."""
    for key in ["/r/é/1", "/r/z", "/r/é0", "/r/éa/2"]:
        await put(kv, key)
    assert [r.key for r in (await kv.range("/r/")).kvs] == ["/r/z", "/r/é/1", "/r/é0", "/r/éa/2"]
    assert [r.key for r in (await kv.range("/r/é/")).kvs] == ["/r/é/1"]


async def test_get_many_returns_the_existing_keys(kv: ExchangeStore) -> None:
    """Missing keys are left out of a multi-get."""
    await put(kv, "/a", b"1")
    await put(kv, "/b", b"2")
    found = await kv.get_many(["/a", "/nope", "/b", "/a"])
    assert {k: v.value for k, v in found.items()} == {"/a": b"1", "/b": b"2"}
    assert await kv.get_many([]) == {}


async def test_concurrent_compare_and_swaps_let_exactly_one_win(kv: ExchangeStore) -> None:
    """Many writers conditioned on the same revision: one succeeds, the rest change nothing."""
    revision = await put(kv, "/state", b"0")
    results = await asyncio.gather(
        *(
            kv.txn([Compare("/state", revision)], [Put("/state", str(i).encode())])
            for i in range(20)
        )
    )
    winners = [i for i, r in enumerate(results) if r.succeeded]
    assert len(winners) == 1
    got = await kv.get("/state")
    assert got is not None and got.value == str(winners[0]).encode()


async def test_second_store_object_sees_writes_and_respects_compares(
    exchange_backend: ExchangeBackend, kv: ExchangeStore
) -> None:
    """Two store objects on the same data (two processes) share keys and revisions."""
    other = await exchange_backend.open()
    revision = await put(kv, "/state", b"REGISTRATION")
    seen = await other.get("/state")
    assert seen is not None and seen.mod_revision == revision
    assert (await other.txn([Compare("/state", revision)], [Put("/state", b"MATCHING")])).succeeded
    assert not (await kv.txn([Compare("/state", revision)], [Put("/state", b"X")])).succeeded


async def test_readers_never_see_part_of_a_transaction(
    exchange_backend: ExchangeBackend, kv: ExchangeStore
) -> None:
    """While a 2,000-key transaction commits, another store sees none or all of it."""
    reader = await exchange_backend.open()
    big = [Put(f"/m/{i:05d}", b"sealed") for i in range(2_000)]
    seen: list[int] = []

    async def read_until_done(done: asyncio.Event) -> None:
        while not done.is_set():
            seen.append(len((await reader.range("/m/")).kvs))
            await asyncio.sleep(0)

    done = asyncio.Event()
    watcher = asyncio.create_task(read_until_done(done))
    await asyncio.sleep(0)
    assert (await kv.txn([], big)).succeeded
    seen.append(len((await reader.range("/m/")).kvs))
    done.set()
    await watcher
    assert set(seen) <= {0, 2_000}
    assert seen[-1] == 2_000


async def test_acknowledged_writes_survive_reopening(exchange_backend: ExchangeBackend) -> None:
    """Close the store and open it again: values and revisions are all there."""
    first = await exchange_backend.open()
    revision = await put(first, "/durable", b"yes")
    await first.close()
    again = await exchange_backend.open()
    got = await again.get("/durable")
    assert got is not None and got.value == b"yes"
    assert await again.revision() == revision


async def test_a_closed_store_refuses_calls(exchange_backend: ExchangeBackend) -> None:
    """Using a store after close raises Unavailable, not a driver error."""
    store = await exchange_backend.open()
    await store.close()
    with pytest.raises(Unavailable):
        await store.get("/a")


@pytest.mark.parametrize(
    ("prefix", "end"),
    [("/a/", "/a0"), ("a", "b"), ("", None), ("\U0010ffff", None), ("a\U0010ffff", "b")],
)
def test_prefix_end_is_the_first_key_past_the_prefix(prefix: str, end: str | None) -> None:
    """The range end of a prefix increments its last character that can be incremented."""
    assert prefix_end(prefix) == end
