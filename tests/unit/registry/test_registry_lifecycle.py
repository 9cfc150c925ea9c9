"""The gift lifecycle rules: task events move gifts forward only."""

from __future__ import annotations

import pytest

from northpole.registry.lifecycle import TaskSignal, advance, is_relevant, plan, target_status
from northpole.registry.model import GiftStatus
from northpole.registry.settings import LifecycleTaskTypes

TYPES = LifecycleTaskTypes()
S = GiftStatus


def sig(task_type: str, state: str, gift_id: int = 1) -> TaskSignal:
    """A task event of gift ``gift_id``."""
    return TaskSignal(gift_id, 100, task_type, state, 1_000)


@pytest.mark.parametrize(
    ("task_type", "state", "expected"),
    [
        ("build", "ASSIGNED", S.IN_PRODUCTION),
        ("build", "IN_PROGRESS", S.IN_PRODUCTION),
        ("build", "COMPLETED", S.IN_PRODUCTION),
        ("wrap", "IN_PROGRESS", S.IN_PRODUCTION),
        ("wrap", "COMPLETED", S.WRAPPED),
        ("load", "ASSIGNED", S.WRAPPED),
        ("load", "COMPLETED", S.LOADED),
        ("deliver", "IN_PROGRESS", S.LOADED),
        ("deliver", "COMPLETED", S.DELIVERED),
        ("wrap", "FAILED", S.FAILED),
        ("deliver", "EXPIRED", S.FAILED),
        ("build", "PENDING", None),
        ("inspect", "COMPLETED", None),
        ("inspect", "FAILED", None),
    ],
)
def test_table_maps_task_events_to_statuses(
    task_type: str, state: str, expected: GiftStatus | None
) -> None:
    """Each row of the documented table gives its status; other events give none."""
    assert target_status(sig(task_type, state), TYPES) is expected
    assert is_relevant(sig(task_type, state), TYPES) is (expected is not None)


def test_status_moves_forward() -> None:
    """An event of a later stage moves the gift to that stage."""
    assert advance(S.REQUESTED, sig("wrap", "COMPLETED"), TYPES) is S.WRAPPED


def test_status_never_goes_backwards() -> None:
    """An event of an earlier stage than the gift's changes nothing."""
    assert advance(S.LOADED, sig("build", "IN_PROGRESS"), TYPES) is None


def test_repeated_event_changes_nothing() -> None:
    """Applying the same event to its own result changes nothing (idempotent)."""
    once = advance(S.REQUESTED, sig("load", "COMPLETED"), TYPES)
    assert once is S.LOADED
    assert advance(once, sig("load", "COMPLETED"), TYPES) is None


@pytest.mark.parametrize("current", [S.REQUESTED, S.IN_PRODUCTION, S.WRAPPED, S.LOADED])
def test_failure_fails_any_unfinished_gift(current: GiftStatus) -> None:
    """A final failure of a lifecycle task fails a gift that is not yet delivered."""
    assert advance(current, sig("build", "FAILED"), TYPES) is S.FAILED


@pytest.mark.parametrize("current", [S.DELIVERED, S.FAILED])
def test_final_statuses_do_not_change(current: GiftStatus) -> None:
    """DELIVERED and FAILED gifts ignore every event."""
    for task_type, state in [("deliver", "COMPLETED"), ("wrap", "FAILED"), ("build", "ASSIGNED")]:
        assert advance(current, sig(task_type, state), TYPES) is None


def test_configured_task_types_are_followed() -> None:
    """Renamed lifecycle task types drive the statuses; the default names then do not."""
    types = LifecycleTaskTypes(build="make", wrap="pack", load="stow", deliver="drop")
    assert advance(S.REQUESTED, sig("pack", "COMPLETED"), types) is S.WRAPPED
    assert advance(S.REQUESTED, sig("wrap", "COMPLETED"), types) is None


def test_plan_chains_changes_per_gift_and_skips_unknown_gifts() -> None:
    """plan applies each gift's signals in order from its status, skipping unknown gifts."""
    signals = [
        sig("build", "ASSIGNED", 1),
        sig("build", "ASSIGNED", 9),
        sig("wrap", "COMPLETED", 1),
        sig("wrap", "COMPLETED", 1),
        sig("deliver", "COMPLETED", 2),
    ]
    changes = plan({1: S.REQUESTED, 2: S.LOADED}, signals, TYPES)
    assert [(c.gift_id, c.old, c.new) for c in changes] == [
        (1, S.REQUESTED, S.IN_PRODUCTION),
        (1, S.IN_PRODUCTION, S.WRAPPED),
        (2, S.LOADED, S.DELIVERED),
    ]
    assert changes[0].cause == "task 100 build ASSIGNED"
