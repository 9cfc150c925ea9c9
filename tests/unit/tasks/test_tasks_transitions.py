"""Unit tests for northpole.tasks.transitions: the task state machine as pure functions."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.core.errors import Conflict
from northpole.tasks import transitions
from northpole.tasks.model import Reason, Task, TaskEvent, TaskState
from northpole.tasks.transitions import (
    IllegalTransition,
    StaleFence,
    assign,
    complete,
    expire,
    fail_attempt,
    fail_final,
    redrive,
    start,
)

S = TaskState
Step = tuple[Task, TaskEvent]

WORKER = "worker-a"
OTHER_WORKER = "worker-b"
FENCE = 3
NOW = 50_000
LEASE_MS = 30_000
DEADLINE = 40_000  # before NOW, so a PENDING task may expire
RETRY_DELAY = 1_500

ACTIONS = ("assign", "start", "complete", "fail_attempt", "fail_final", "expire", "redrive")
HOLDER_ACTIONS = frozenset({"start", "complete"})

#: Every legal (state, action) pair and the states it may lead to.
EDGES: dict[tuple[TaskState, str], frozenset[TaskState]] = {
    (S.PENDING, "assign"): frozenset({S.ASSIGNED}),
    (S.ASSIGNED, "start"): frozenset({S.IN_PROGRESS}),
    (S.IN_PROGRESS, "complete"): frozenset({S.COMPLETED}),
    (S.ASSIGNED, "complete"): frozenset({S.COMPLETED}),  # passes through start
    (S.ASSIGNED, "fail_attempt"): frozenset({S.PENDING, S.FAILED}),
    (S.IN_PROGRESS, "fail_attempt"): frozenset({S.PENDING, S.FAILED}),
    (S.ASSIGNED, "fail_final"): frozenset({S.FAILED}),
    (S.IN_PROGRESS, "fail_final"): frozenset({S.FAILED}),
    (S.PENDING, "fail_final"): frozenset({S.FAILED}),
    (S.PENDING, "expire"): frozenset({S.EXPIRED}),
    (S.FAILED, "redrive"): frozenset({S.PENDING}),
}

#: Every (old, new) state change a single step may make: the documented graph.
GRAPH = frozenset(
    {(src, dst) for (src, _), dsts in EDGES.items() for dst in dsts} - {(S.ASSIGNED, S.COMPLETED)}
)

#: What each legal pair yields with the inputs of :func:`run` (new state, event reason).
EXPECTED: dict[tuple[TaskState, str], tuple[TaskState, str | None]] = {
    (S.PENDING, "assign"): (S.ASSIGNED, None),
    (S.ASSIGNED, "start"): (S.IN_PROGRESS, None),
    (S.IN_PROGRESS, "complete"): (S.COMPLETED, None),
    (S.ASSIGNED, "complete"): (S.COMPLETED, None),
    (S.ASSIGNED, "fail_attempt"): (S.PENDING, "handler_error"),
    (S.IN_PROGRESS, "fail_attempt"): (S.PENDING, "handler_error"),
    (S.ASSIGNED, "fail_final"): (S.FAILED, "cancelled"),
    (S.IN_PROGRESS, "fail_final"): (S.FAILED, "cancelled"),
    (S.PENDING, "fail_final"): (S.FAILED, "cancelled"),
    (S.PENDING, "expire"): (S.EXPIRED, "deadline_exceeded"),
    (S.FAILED, "redrive"): (S.PENDING, "redriven"),
}

ALL_PAIRS = [(state, action) for state in S for action in ACTIONS]


def make_task(state: TaskState = S.PENDING, **overrides: Any) -> Task:
    """Return a realistic stored task in ``state`` (held by WORKER under FENCE if running)."""
    fields: dict[str, Any] = {
        "id": 7_000_001,
        "gift_id": 42,
        "task_type": "wrap",
        "priority": 5,
        "dependencies": (7_000_000,),
        "max_retries": 3,
        "deadline_ms": DEADLINE,
        "metadata": {"colour": "red"},
        "idempotency_key": "key-1",
        "partition": 9,
        "state": state,
        "created_ms": 1_000,
        "updated_ms": 2_000,
        "available_ms": 1_000,
        "attempts": FENCE - 1,
        "retry_count": 1,
        "fence": FENCE - 1,
    }
    if state.is_running:
        fields.update(attempts=FENCE, fence=FENCE, worker_id=WORKER, lease_until_ms=NOW + LEASE_MS)
    if state is S.IN_PROGRESS:
        fields["started_ms"] = 3_000
    if state.is_final:
        fields.update(attempts=FENCE, fence=FENCE, finished_ms=4_000)
    if state is S.COMPLETED:
        fields["result"] = "done"
    if state is S.FAILED:
        fields["last_error"] = "handler_error: boom"
    fields.update(overrides)
    return Task(**fields)


def run(action: str, task: Task) -> list[Step]:
    """Apply ``action`` to ``task`` with the holder's credentials; return every step."""
    calls: dict[str, Callable[[], Step | list[Step]]] = {
        "assign": lambda: assign(task, worker_id=WORKER, now_ms=NOW, lease_ms=LEASE_MS),
        "start": lambda: start(task, worker_id=WORKER, fence=FENCE, now_ms=NOW),
        "complete": lambda: complete(task, worker_id=WORKER, fence=FENCE, now_ms=NOW, result="ok"),
        "fail_attempt": lambda: fail_attempt(
            task,
            reason=Reason.HANDLER_ERROR,
            message="boom",
            now_ms=NOW,
            retry_delay_ms=RETRY_DELAY,
        ),
        "fail_final": lambda: fail_final(task, reason=Reason.CANCELLED, message="", now_ms=NOW),
        "expire": lambda: expire(task, now_ms=NOW),
        "redrive": lambda: redrive(task, now_ms=NOW),
    }
    out = calls[action]()
    return out if isinstance(out, list) else [out]


def parse_docstring_edges() -> dict[tuple[TaskState, str], frozenset[TaskState]]:
    """Return the edge list of the transitions module docstring as (state, action) -> targets."""
    doc = transitions.__doc__ or ""
    body = doc.split("Legal edges::", 1)[1]
    edges: dict[tuple[TaskState, str], frozenset[TaskState]] = {}
    for line in body.splitlines():
        match = re.match(r"\s+([A-Z_]+)\s+->\s+([A-Z_|]+)\s+(\w+)", line)
        if match:
            src, dsts, action = match.groups()
            key = (S(src), action)
            assert key not in edges, f"edge listed twice: {key}"
            edges[key] = frozenset(S(d) for d in dsts.split("|"))
    return edges


def assert_event(event: TaskEvent, old: Task, new: Task, reason: str | None) -> None:
    """Assert that ``event`` records the step from ``old`` to ``new`` at NOW with ``reason``."""
    assert event.task_id == old.id
    assert event.gift_id == old.gift_id
    assert event.task_type == old.task_type
    assert event.old_state is old.state
    assert event.new_state is new.state
    assert event.reason == reason
    assert event.attempt == new.attempts
    assert event.at_ms == NOW
    assert new.updated_ms == NOW


# -- the table --------------------------------------------------------------------------


def test_table_matches_the_module_docstring() -> None:
    """The test's edge table is exactly the docstring's list plus ASSIGNED -complete-> COMPLETED."""
    documented = parse_docstring_edges()
    assert len(documented) == 10
    assert {**documented, (S.ASSIGNED, "complete"): frozenset({S.COMPLETED})} == EDGES
    assert set(EXPECTED) == set(EDGES)
    assert all(EXPECTED[pair][0] in EDGES[pair] for pair in EDGES)


def test_table_covers_every_state_and_action() -> None:
    """The parametrised table has all 6 states x 7 actions and every action is a function."""
    assert len(ALL_PAIRS) == 6 * 7
    assert {action for _, action in EDGES} == set(ACTIONS)
    assert all(callable(getattr(transitions, action)) for action in ACTIONS)


@pytest.mark.parametrize(("state", "action"), ALL_PAIRS, ids=lambda v: str(v))
def test_every_state_action_pair(state: TaskState, action: str) -> None:
    """A legal pair yields the documented state and event; an illegal one raises a 409."""
    task = make_task(state)
    snapshot = copy.deepcopy(task)
    if (state, action) in EDGES:
        steps = run(action, task)
        new, event = steps[-1]
        expected_state, expected_reason = EXPECTED[(state, action)]
        assert new.state is expected_state
        assert new.state in EDGES[(state, action)]
        previous = steps[-2][0] if len(steps) > 1 else task
        assert_event(event, previous, new, expected_reason)
        for before, (after, _) in zip([task, *[s[0] for s in steps]], steps, strict=False):
            assert (before.state, after.state) in GRAPH
            assert after is not before
            assert (after.id, after.gift_id, after.task_type) == (task.id, task.gift_id, "wrap")
    else:
        with pytest.raises(Conflict) as info:
            run(action, task)
        error = info.value
        assert error.status_code == 409
        if action in HOLDER_ACTIONS and not state.is_running:
            # No worker holds a task that is not running: the holder check answers first.
            assert type(error) is StaleFence
            assert (error.code, error.field) == ("stale_fence", "fence")
        else:
            assert type(error) is IllegalTransition
            assert (error.code, error.field) == ("illegal_transition", "state")
            assert error.to_body()["error"]["code"] == "illegal_transition"
            assert (error.task_id, error.state) == (task.id, state)
            assert state.value in error.message
    assert task == snapshot


def test_illegal_transition_is_a_409_conflict_with_details() -> None:
    """IllegalTransition is a Conflict with status 409, its code, field 'state' and the action."""
    task = make_task(S.COMPLETED)
    with pytest.raises(IllegalTransition) as info:
        assign(task, worker_id=WORKER, now_ms=NOW, lease_ms=LEASE_MS)
    error = info.value
    assert isinstance(error, Conflict)
    assert (error.status_code, error.code, error.field) == (409, "illegal_transition", "state")
    assert (error.task_id, error.state, error.action) == (task.id, S.COMPLETED, "assign")
    assert error.to_body() == {
        "error": {
            "code": "illegal_transition",
            "message": f"cannot assign task {task.id} in state COMPLETED",
            "field": "state",
        }
    }


def test_start_on_a_running_task_that_already_started_is_illegal() -> None:
    """The holder starting an IN_PROGRESS task again gets IllegalTransition, not StaleFence."""
    with pytest.raises(IllegalTransition) as info:
        start(make_task(S.IN_PROGRESS), worker_id=WORKER, fence=FENCE, now_ms=NOW)
    assert info.value.code == "illegal_transition"


# -- assign -----------------------------------------------------------------------------


def test_assign_bumps_attempts_and_fence_and_sets_the_lease() -> None:
    """Assign raises attempts and fence by one and records the worker and lease end."""
    task = make_task(S.PENDING, attempts=2, fence=2)
    new, event = assign(task, worker_id=OTHER_WORKER, now_ms=NOW, lease_ms=LEASE_MS)
    assert new.state is S.ASSIGNED
    assert (new.attempts, new.fence) == (3, 3)
    assert new.worker_id == OTHER_WORKER
    assert new.lease_until_ms == NOW + LEASE_MS
    assert new.retry_count == task.retry_count
    assert event.attempt == 3
    assert new == dataclasses.replace(
        task,
        state=S.ASSIGNED,
        attempts=3,
        fence=3,
        worker_id=OTHER_WORKER,
        lease_until_ms=NOW + LEASE_MS,
        updated_ms=NOW,
    )


def test_first_assign_of_a_new_task_gives_attempt_and_fence_one() -> None:
    """A freshly submitted task (attempts 0, fence 0) is assigned with attempt 1 and fence 1."""
    task = make_task(S.PENDING, attempts=0, fence=0, retry_count=0)
    new, event = assign(task, worker_id=WORKER, now_ms=NOW, lease_ms=10)
    assert (new.attempts, new.fence, event.attempt) == (1, 1, 1)
    assert event.old_state is S.PENDING and event.new_state is S.ASSIGNED


# -- holder checks ----------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.ASSIGNED, S.IN_PROGRESS])
@pytest.mark.parametrize(
    ("worker_id", "fence"),
    [(OTHER_WORKER, FENCE), (WORKER, FENCE - 1), (WORKER, FENCE + 1), (OTHER_WORKER, FENCE - 1)],
)
def test_complete_needs_the_holder_and_fence(state: TaskState, worker_id: str, fence: int) -> None:
    """Complete by another worker or with another fence raises StaleFence (409, stale_fence)."""
    task = make_task(state)
    with pytest.raises(StaleFence) as info:
        complete(task, worker_id=worker_id, fence=fence, now_ms=NOW, result="ok")
    error = info.value
    assert isinstance(error, Conflict)
    assert (error.status_code, error.code, error.field) == (409, "stale_fence", "fence")
    assert task == make_task(state)


@pytest.mark.parametrize(
    ("worker_id", "fence"), [(OTHER_WORKER, FENCE), (WORKER, FENCE - 1), (WORKER, FENCE + 1)]
)
def test_start_needs_the_holder_and_fence(worker_id: str, fence: int) -> None:
    """Start by another worker or with another fence raises StaleFence."""
    with pytest.raises(StaleFence) as info:
        start(make_task(S.ASSIGNED), worker_id=worker_id, fence=fence, now_ms=NOW)
    assert info.value.code == "stale_fence"


def test_check_holder_accepts_the_holder_and_rejects_a_reclaimed_lease() -> None:
    """check_holder passes for the holder, and fails once the task was reassigned elsewhere."""
    held = make_task(S.ASSIGNED)
    transitions.check_holder(held, WORKER, FENCE)
    reclaimed, _ = fail_attempt(
        held, reason=Reason.LEASE_EXPIRED, message="", now_ms=NOW, retry_delay_ms=0
    )
    reassigned, _ = assign(reclaimed, worker_id=OTHER_WORKER, now_ms=NOW, lease_ms=LEASE_MS)
    with pytest.raises(StaleFence):
        transitions.check_holder(reclaimed, WORKER, FENCE)
    with pytest.raises(StaleFence):
        transitions.check_holder(reassigned, WORKER, FENCE)
    with pytest.raises(StaleFence):
        complete(reassigned, worker_id=WORKER, fence=FENCE, now_ms=NOW, result="late")
    transitions.check_holder(reassigned, OTHER_WORKER, FENCE + 1)


# -- start and complete -----------------------------------------------------------------


def test_start_records_the_start_time() -> None:
    """Start moves ASSIGNED to IN_PROGRESS and records started_ms, keeping the lease."""
    task = make_task(S.ASSIGNED)
    new, event = start(task, worker_id=WORKER, fence=FENCE, now_ms=NOW)
    assert new.state is S.IN_PROGRESS
    assert new.started_ms == NOW
    assert (new.worker_id, new.fence, new.lease_until_ms) == (WORKER, FENCE, task.lease_until_ms)
    assert_event(event, task, new, None)


def test_complete_from_in_progress_is_one_step() -> None:
    """Complete of an IN_PROGRESS task returns one step that releases the worker."""
    task = make_task(S.IN_PROGRESS)
    steps = complete(task, worker_id=WORKER, fence=FENCE, now_ms=NOW, result="wrapped")
    assert len(steps) == 1
    new, event = steps[0]
    assert new.state is S.COMPLETED
    assert (new.result, new.finished_ms, new.started_ms) == ("wrapped", NOW, 3_000)
    assert (new.worker_id, new.lease_until_ms) == (None, None)
    assert_event(event, task, new, None)


def test_complete_from_assigned_returns_start_then_complete() -> None:
    """Complete of an ASSIGNED task returns two steps: ASSIGNED->IN_PROGRESS (dated at the
    assignment), then ->COMPLETED."""
    task = make_task(S.ASSIGNED)
    steps = complete(task, worker_id=WORKER, fence=FENCE, now_ms=NOW, result=None)
    assert len(steps) == 2
    (started, start_event), (done, done_event) = steps
    assert started.state is S.IN_PROGRESS
    assert_event(start_event, task, started, None)
    assert done.state is S.COMPLETED
    assert_event(done_event, started, done, None)
    assert (start_event.old_state, start_event.new_state) == (S.ASSIGNED, S.IN_PROGRESS)
    assert (done_event.old_state, done_event.new_state) == (S.IN_PROGRESS, S.COMPLETED)
    assert (done.started_ms, done.finished_ms, done.result) == (task.updated_ms, NOW, None)
    assert task.updated_ms < NOW
    assert done.attempts == task.attempts


# -- fail_attempt -----------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.ASSIGNED, S.IN_PROGRESS])
@pytest.mark.parametrize("delay", [0, 1, RETRY_DELAY, 600_000])
def test_fail_attempt_with_retries_left_goes_back_to_pending(state: TaskState, delay: int) -> None:
    """With retries left and a delay, the task is PENDING again at now + delay, retry_count+1."""
    task = make_task(state, retry_count=1, max_retries=3)
    new, event = fail_attempt(
        task, reason=Reason.HANDLER_ERROR, message="ribbon jam", now_ms=NOW, retry_delay_ms=delay
    )
    assert new.state is S.PENDING
    assert new.retry_count == 2
    assert new.available_ms == NOW + delay
    assert (new.worker_id, new.lease_until_ms, new.started_ms) == (None, None, None)
    assert new.last_error == "handler_error: ribbon jam"
    assert (new.attempts, new.fence) == (task.attempts, task.fence)
    assert new.finished_ms is None
    assert_event(event, task, new, "handler_error")


@pytest.mark.parametrize("reason", [Reason.DEADLINE_EXCEEDED, Reason.HANDLER_ERROR])
def test_fail_attempt_without_a_delay_fails_with_the_given_reason(reason: Reason) -> None:
    """retry_delay_ms None means no retry: FAILED with the given reason, retries left or not."""
    task = make_task(S.IN_PROGRESS, retry_count=0, max_retries=5)
    new, event = fail_attempt(task, reason=reason, message="late", now_ms=NOW, retry_delay_ms=None)
    assert new.state is S.FAILED
    assert new.retry_count == 0
    assert new.last_error == f"{reason.value}: late"
    assert (new.worker_id, new.lease_until_ms, new.finished_ms) == (None, None, NOW)
    assert_event(event, task, new, reason.value)


@pytest.mark.parametrize(("retry_count", "max_retries"), [(3, 3), (0, 0), (7, 7)])
def test_fail_attempt_with_no_retries_left_is_retries_exhausted(
    retry_count: int, max_retries: int
) -> None:
    """With retry_count == max_retries the task is FAILED with reason retries_exhausted."""
    task = make_task(S.ASSIGNED, retry_count=retry_count, max_retries=max_retries)
    new, event = fail_attempt(
        task, reason=Reason.HANDLER_ERROR, message="boom", now_ms=NOW, retry_delay_ms=RETRY_DELAY
    )
    assert new.state is S.FAILED
    assert new.retry_count == retry_count
    assert new.last_error == "handler_error: boom"
    assert_event(event, task, new, "retries_exhausted")


def test_fail_attempt_with_an_empty_message_records_the_bare_reason() -> None:
    """An empty message leaves last_error as just the reason."""
    new, _ = fail_attempt(
        make_task(S.IN_PROGRESS),
        reason=Reason.LEASE_EXPIRED,
        message="",
        now_ms=NOW,
        retry_delay_ms=10,
    )
    assert new.last_error == "lease_expired"


def test_retries_run_out_after_max_retries_failures() -> None:
    """A task with max_retries=2 is retried twice and fails on the third failed attempt."""
    task = make_task(S.PENDING, attempts=0, fence=0, retry_count=0, max_retries=2)
    states = []
    now = NOW
    for _ in range(3):
        task, _ = assign(task, worker_id=WORKER, now_ms=now, lease_ms=LEASE_MS)
        task, event = fail_attempt(
            task, reason=Reason.HANDLER_ERROR, message="x", now_ms=now, retry_delay_ms=5
        )
        states.append((task.state, event.reason, task.retry_count, task.attempts))
        now += 10
    assert states == [
        (S.PENDING, "handler_error", 1, 1),
        (S.PENDING, "handler_error", 2, 2),
        (S.FAILED, "retries_exhausted", 2, 3),
    ]


# -- fail_final, expire, redrive --------------------------------------------------------


@pytest.mark.parametrize("state", [S.PENDING, S.ASSIGNED, S.IN_PROGRESS])
@pytest.mark.parametrize("reason", [Reason.CANCELLED, Reason.DEPENDENCY_FAILED])
def test_fail_final_fails_without_retry(state: TaskState, reason: Reason) -> None:
    """fail_final makes the task FAILED with the reason, whatever retries it had left."""
    task = make_task(state, retry_count=0, max_retries=10)
    new, event = fail_final(task, reason=reason, message="by elf", now_ms=NOW)
    assert new.state is S.FAILED
    assert new.last_error == f"{reason.value}: by elf"
    assert (new.worker_id, new.lease_until_ms, new.finished_ms) == (None, None, NOW)
    assert new.retry_count == 0
    assert_event(event, task, new, reason.value)


@pytest.mark.parametrize("deadline", [None, NOW + 1, NOW + 1_000_000])
def test_expire_before_the_deadline_or_without_one_raises(deadline: int | None) -> None:
    """Expiring a PENDING task with no deadline or a future one raises IllegalTransition."""
    task = make_task(S.PENDING, deadline_ms=deadline)
    with pytest.raises(IllegalTransition) as info:
        expire(task, now_ms=NOW)
    assert (info.value.status_code, info.value.field) == (409, "state")


def test_expire_after_the_deadline() -> None:
    """A PENDING task past its deadline expires with reason deadline_exceeded."""
    task = make_task(S.PENDING, deadline_ms=NOW - 1)
    new, event = expire(task, now_ms=NOW)
    assert new.state is S.EXPIRED
    assert new.finished_ms == NOW
    assert_event(event, task, new, "deadline_exceeded")


def test_redrive_resets_the_retry_budget() -> None:
    """Redrive makes a FAILED task PENDING now, with retry_count 0, keeping attempts and fence."""
    task = make_task(S.FAILED, retry_count=3, max_retries=3, attempts=4, fence=4)
    new, event = redrive(task, now_ms=NOW)
    assert new.state is S.PENDING
    assert new.retry_count == 0
    assert new.available_ms == NOW
    assert (new.finished_ms, new.started_ms, new.worker_id) == (None, None, None)
    assert (new.attempts, new.fence) == (4, 4)
    assert_event(event, task, new, "redriven")
    again, _ = assign(new, worker_id=WORKER, now_ms=NOW, lease_ms=LEASE_MS)
    retried, _ = fail_attempt(
        again, reason=Reason.HANDLER_ERROR, message="", now_ms=NOW, retry_delay_ms=1
    )
    assert retried.state is S.PENDING


# -- immutability -----------------------------------------------------------------------


def test_tasks_and_events_are_frozen() -> None:
    """Task and TaskEvent reject attribute assignment."""
    task = make_task(S.PENDING)
    _, event = assign(task, worker_id=WORKER, now_ms=NOW, lease_ms=LEASE_MS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.state = S.ASSIGNED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.new_state = S.FAILED  # type: ignore[misc]


@pytest.mark.parametrize("pair", sorted(EDGES, key=str), ids=str)
def test_legal_transitions_leave_the_input_untouched(pair: tuple[TaskState, str]) -> None:
    """Every legal transition returns a new Task and leaves the original equal to its copy."""
    state, action = pair
    task = make_task(state)
    snapshot = copy.deepcopy(task)
    metadata = task.metadata
    steps = run(action, task)
    assert task == snapshot
    assert task.metadata is metadata and metadata == {"colour": "red"}
    assert all(new is not task for new, _ in steps)


# -- random walks -----------------------------------------------------------------------

ACTION_STEPS = st.tuples(
    st.sampled_from(ACTIONS),
    st.sampled_from([WORKER, OTHER_WORKER]),
    st.sampled_from([0, 0, 0, -1, 1]),  # fence offset: mostly the right one
    st.sampled_from([None, 0, 100, 5_000]),  # retry delay
    st.integers(0, 20_000),  # time passing before the action
)


def apply_random(task: Task, step: tuple[str, str, int, int | None, int], now: int) -> list[Step]:
    """Apply one random action to ``task`` at ``now``."""
    action, worker, offset, delay, _ = step
    fence = task.fence + offset
    if action == "assign":
        return [assign(task, worker_id=worker, now_ms=now, lease_ms=LEASE_MS)]
    if action == "start":
        return [start(task, worker_id=worker, fence=fence, now_ms=now)]
    if action == "complete":
        return complete(task, worker_id=worker, fence=fence, now_ms=now, result="r")
    if action == "fail_attempt":
        reason = Reason.HANDLER_ERROR
        return [fail_attempt(task, reason=reason, message="m", now_ms=now, retry_delay_ms=delay)]
    if action == "fail_final":
        return [fail_final(task, reason=Reason.CANCELLED, message="", now_ms=now)]
    if action == "expire":
        return [expire(task, now_ms=now)]
    return [redrive(task, now_ms=now)]


def should_succeed(task: Task, step: tuple[str, str, int, int | None, int], now: int) -> bool:
    """Whether the documented machine allows ``step`` on ``task`` at ``now``."""
    action, worker, offset, _, _ = step
    if (task.state, action) not in EDGES:
        return False
    if action in HOLDER_ACTIONS and (worker != task.worker_id or offset != 0):
        return False
    if action == "expire":
        return task.deadline_ms is not None and task.deadline_ms <= now
    return True


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(ACTION_STEPS, max_size=40),
    max_retries=st.integers(0, 3),
    deadline=st.one_of(st.none(), st.integers(0, 200_000)),
)
def test_random_action_sequences_stay_in_the_documented_graph(
    steps: list[tuple[str, str, int, int | None, int]], max_retries: int, deadline: int | None
) -> None:
    """Any action sequence only moves along documented edges; final states leave only by redrive."""
    task = make_task(
        S.PENDING,
        attempts=0,
        fence=0,
        retry_count=0,
        max_retries=max_retries,
        deadline_ms=deadline,
        available_ms=0,
        updated_ms=0,
    )
    now = 0
    assigns = 0
    for step in steps:
        now += step[4]
        before = task
        expected = should_succeed(task, step, now)
        try:
            out = apply_random(task, step, now)
        except Conflict:
            assert not expected, f"{step[0]} from {task.state} was refused"
            continue
        assert expected, f"{step[0]} from {before.state} was allowed"
        if before.state.is_final:
            assert (before.state, step[0]) == (S.FAILED, "redrive")
        for new, event in out:
            assert (task.state, new.state) in GRAPH
            assert (event.old_state, event.new_state) == (task.state, new.state)
            assert event.at_ms == now and event.attempt == new.attempts
            task = new
        assigns += step[0] == "assign"
        assert task.state in EDGES[(before.state, step[0])]
        assert (task.worker_id is not None) == task.state.is_running
        assert task.fence == task.attempts == assigns
        assert 0 <= task.retry_count <= task.max_retries
        assert (task.id, task.gift_id, task.metadata) == (7_000_001, 42, {"colour": "red"})
