"""Unit tests of the Redis task store's pure parts: key layout, record codec, scripts on disk."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from northpole.core.errors import InvalidInput
from northpole.idgen import IdGenerator, encode
from northpole.tasks.model import Task, TaskState
from northpole.tasks.redis_codec import (
    DEFAULTED,
    HEAD_FIELDS,
    depth_key,
    event_from_reply,
    task_fields,
    task_from_flat,
)
from northpole.tasks.redis_keys import DIRECTORY_BUCKETS, FIELDS, Keys, directory_bucket
from northpole.tasks.redis_scripts import (
    PARTITION_SCRIPTS,
    PLAIN_SCRIPTS,
    connect,
    load_scripts,
)
from northpole.tasks.scheduler import schedule_key

S = TaskState


def _slot(key: str) -> int:
    """Redis Cluster's slot of a key: CRC16/XMODEM of its hash tag (or of the whole key)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def _task(**changes: object) -> Task:
    base = Task(
        id=2**62 + 17,
        gift_id=2**63 - 1,
        task_type="wrap | ✓ {x}",
        priority=-(2**31),
        dependencies=(5, 2**62),
        max_retries=3,
        deadline_ms=1_767_225_660_000,
        metadata={"to": "Ada", "note": 'ü "q"'},
        idempotency_key="",
        partition=7,
        state=S.IN_PROGRESS,
        created_ms=1_767_225_600_000,
        updated_ms=1_767_225_600_010,
        available_ms=1_767_225_600_000,
        attempts=2,
        retry_count=1,
        worker_id="w-1",
        lease_until_ms=1_767_225_630_000,
        fence=2,
        started_ms=1_767_225_600_005,
        finished_ms=None,
        last_error="handler_error: boom",
        result="",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_every_key_of_a_partition_shares_the_partition_s_slot() -> None:
    """All keys a partition script touches hash to one cluster slot, whatever the task."""
    keys = Keys("np")
    for partition in (0, 7, 4095):
        slot = _slot(keys.partition(partition))
        built = [
            keys.task(partition, 2**63 - 1),
            keys.depth(partition),
            keys.durations(partition),
            keys.holders(partition),
            keys.types(partition),
            keys.pending(partition, "a {b} c"),
            keys.outbox(partition),
            keys.partition(partition) + "ready:wrap",
        ]
        assert {_slot(k) for k in built} == {slot}


def test_partitions_spread_over_the_cluster_slots() -> None:
    """Sixteen partitions land in sixteen different slots."""
    keys = Keys()
    assert len({_slot(keys.partition(p)) for p in range(16)}) == 16


def test_registry_idempotency_and_directory_live_in_slots_of_their_own() -> None:
    """The worker registry, the idempotency hash and directory buckets are apart from partitions."""
    keys = Keys("np")
    assert _slot(keys.workers) == _slot(keys.workers_prefix + "group:g")
    assert keys.directory(5) == keys.directory(6)
    assert _slot(keys.directory(5)) != _slot(keys.partition(0))
    assert keys.idempotency == "np:{i}:idem"


def test_a_batch_of_snowflake_ids_shares_a_directory_bucket_and_buckets_rotate() -> None:
    """One workshop's ids of one millisecond share a bucket; over 64 ms (or 64
    workshops) every bucket is used once."""
    batch = IdGenerator(workshop_id=3).next_ids(1_000)
    assert len({directory_bucket(i) for i in batch}) <= 2
    by_ms = {
        directory_bucket(encode(elapsed_ms=1_000 + ms, workshop_id=3, sequence=0))
        for ms in range(DIRECTORY_BUCKETS)
    }
    by_workshop = {
        directory_bucket(encode(elapsed_ms=1_000, workshop_id=w, sequence=0))
        for w in range(DIRECTORY_BUCKETS)
    }
    assert by_ms == by_workshop == set(range(DIRECTORY_BUCKETS))


def test_a_namespace_with_braces_or_spaces_is_refused() -> None:
    """A namespace that could break the hash tags is rejected with InvalidInput."""
    for bad in ("a{b", "a b", "", "x" * 65):
        with pytest.raises(InvalidInput) as info:
            Keys(bad)
        assert info.value.field == "namespace"


def test_a_record_round_trips_through_its_hash_fields() -> None:
    """task_fields then task_from_flat gives back the same Task, 63-bit ids included."""
    for task in (_task(), _task(dependencies=(), metadata={}, idempotency_key=None, result=None)):
        assert task_from_flat(task_fields(task, aging_ms=1_000)) == task


def test_none_fields_are_left_out_and_empty_strings_kept() -> None:
    """A None is an absent field; an empty string stays a present, empty field."""
    fields = task_fields(_task(finished_ms=None, result=""), aging_ms=1_000)
    names = fields[0::2]
    assert "fi" not in names
    assert fields[fields.index("re") + 1] == ""
    assert set(names) <= set(FIELDS.values())


def test_the_fixed_fields_lead_in_the_order_the_submit_script_reads_them() -> None:
    """The first 9 pairs are HEAD_FIELDS in order, whatever optional fields a task has."""
    bare = task_fields(_task(deadline_ms=None, metadata={}, idempotency_key=None), aging_ms=1)
    full = task_fields(_task(deadline_ms=99, worker_id="w", result="r"), aging_ms=1)
    head = 2 * len(HEAD_FIELDS)
    for fields in (bare, full):
        assert tuple(fields[0:head:2]) == HEAD_FIELDS
    assert "dl" in full[head::2]


def test_fields_at_their_default_are_left_out_and_read_back() -> None:
    """A new task stores no attempts, retry count, fence, update or available time; a
    task whose values differ stores them; both decode to the same Task."""
    fresh = _task(
        created_ms=500, updated_ms=500, available_ms=500, attempts=0, retry_count=0, fence=0
    )
    names = task_fields(fresh, aging_ms=1)[0::2]
    assert not set(DEFAULTED) & set(names)
    assert task_from_flat(task_fields(fresh, aging_ms=1)) == fresh
    moved = _task(
        created_ms=500, updated_ms=600, available_ms=700, attempts=2, retry_count=1, fence=3
    )
    names = task_fields(moved, aging_ms=1)[0::2]
    assert set(DEFAULTED) <= set(names)
    assert task_from_flat(task_fields(moved, aging_ms=1)) == moved


def test_the_stored_sched_key_is_the_scheduler_s() -> None:
    """The ``sk`` field is scheduler.schedule_key of priority and available_ms."""
    task = _task(priority=5, available_ms=10_000)
    fields = task_fields(task, aging_ms=250)
    assert int(fields[fields.index("sk") + 1]) == schedule_key(5, 10_000, 250)


@given(
    st.integers(0, 2**63 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_any_ids_priorities_and_metadata_round_trip(
    gift_id: int, priority: int, metadata: dict[str, str]
) -> None:
    """Records with any gift id, priority and metadata survive the codec unchanged."""
    task = _task(gift_id=gift_id, priority=priority, metadata=metadata)
    assert task_from_flat(task_fields(task, aging_ms=3_600_000)) == task


def test_an_event_reply_becomes_a_task_event() -> None:
    """A script's event item maps to TaskEvent, empty strings meaning None."""
    event = event_from_reply(["9", "8", "wrap", "ASSIGNED", "FAILED", "100", "cancelled", "1", ""])
    assert (event.task_id, event.gift_id, event.old_state, event.new_state) == (
        9,
        8,
        S.ASSIGNED,
        S.FAILED,
    )
    assert (event.at_ms, event.reason, event.attempt, event.started_ms) == (
        100,
        "cancelled",
        1,
        None,
    )


def test_depth_fields_split_on_the_first_two_bars_only() -> None:
    """A task type containing ``|`` survives the depth counter's field name."""
    assert depth_key("PENDING|-3|a|b") == (S.PENDING, -3, "a|b")


def test_every_script_is_loaded_with_a_documented_header() -> None:
    """Each script exists, documents KEYS[1] and ARGV, and partition scripts get the helpers."""
    scripts = load_scripts()
    assert set(scripts) == {*PARTITION_SCRIPTS, *PLAIN_SCRIPTS}
    for name, script in scripts.items():
        body = script.source.split("\n-- ", 1)[-1] if name in PARTITION_SCRIPTS else script.source
        assert "KEYS[1]" in script.source and "ARGV[1]" in script.source, name
        assert "Returns" in body or "returns" in body, name
        assert re.fullmatch(r"[0-9a-f]{40}", script.sha)
        assert ("local function transit" in script.source) == (name in PARTITION_SCRIPTS)
    assert len({s.sha for s in scripts.values()}) == len(scripts)


def test_connect_refuses_unknown_schemes_and_sentinel_urls_without_a_service() -> None:
    """A URL of another scheme, or a Sentinel URL naming no service, is a ConfigurationError."""
    from northpole.core.errors import ConfigurationError

    for url in ("http://x:1", "redis+sentinel://127.0.0.1:26379", "redis+cluster://nohost"):
        with pytest.raises(ConfigurationError) as info:
            connect(url)
        assert info.value.field == "redis_url"


def test_the_slot_function_matches_a_known_redis_slot() -> None:
    """The test's slot helper agrees with Redis' documented example (``foo`` -> 12182)."""
    assert _slot("foo") == 12182
    assert _slot("{user1000}.following") == _slot("{user1000}.followers")
