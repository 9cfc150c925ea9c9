"""Unit tests for northpole.tasks.retry: exponential backoff with equal jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from northpole.core.errors import InvalidInput
from northpole.tasks.retry import RetryPolicy


def ceiling(policy: RetryPolicy, n: int) -> int:
    """Return the documented ``d = min(max_ms, base_ms * factor**(n-1))``, computed here."""
    return int(min(policy.max_ms, policy.base_ms * policy.factor ** (n - 1)))


POLICIES = st.builds(
    lambda base, factor, extra: RetryPolicy(base_ms=base, factor=factor, max_ms=base + extra),
    st.integers(0, 10_000_000),
    st.floats(1.0, 10.0, allow_nan=False, allow_infinity=False),
    st.integers(0, 10**9),
)


@settings(max_examples=500, deadline=None)
@given(policy=POLICIES, n=st.integers(1, 65), seed=st.integers(0, 2**64 - 1))
def test_delay_is_within_half_and_full_ceiling(policy: RetryPolicy, n: int, seed: int) -> None:
    """delay_ms(n) lies in [d/2, d] (d/2 rounded down) with d computed from the formula."""
    d = ceiling(policy, n)
    assert policy.ceiling_ms(n) == d
    delay = policy.delay_ms(n, random.Random(seed))
    assert isinstance(delay, int)
    assert d // 2 <= delay <= d


@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(1, 1_000_000),
    factor=st.floats(2.0, 10.0),
    max_ms=st.integers(1_000_000, 10**12),
    n=st.one_of(st.integers(66, 10**6), st.integers(10**6, 2**200)),
    seed=st.integers(0, 2**32),
)
def test_huge_retry_numbers_give_the_cap(
    base: int, factor: float, max_ms: int, n: int, seed: int
) -> None:
    """Far past the cap, the ceiling is max_ms and the delay in [max_ms/2, max_ms], no overflow."""
    policy = RetryPolicy(base_ms=base, factor=factor, max_ms=max_ms)
    assert policy.ceiling_ms(n) == max_ms
    assert max_ms // 2 <= policy.delay_ms(n, random.Random(seed)) <= max_ms


@pytest.mark.parametrize("n", [64, 65, 66, 1_000, 10**9, 2**63, 10**100])
def test_default_policy_does_not_overflow(n: int) -> None:
    """The default policy returns the 300 s cap for huge retry numbers without an error."""
    policy = RetryPolicy()
    assert policy.ceiling_ms(n) == 300_000
    assert 150_000 <= policy.delay_ms(n, random.Random(n)) <= 300_000


def test_default_ceilings_double_until_the_cap() -> None:
    """The default policy's ceilings are 1 s, 2 s, 4 s, ... and stay at 300 s once reached."""
    policy = RetryPolicy()
    ceilings = [policy.ceiling_ms(n) for n in range(1, 13)]
    assert ceilings == [
        1_000,
        2_000,
        4_000,
        8_000,
        16_000,
        32_000,
        64_000,
        128_000,
        256_000,
        300_000,
        300_000,
        300_000,
    ]


@pytest.mark.parametrize("seed", range(20))
def test_delays_grow_with_the_retry_number_until_the_cap(seed: int) -> None:
    """With factor 2 each delay is at least the previous one, whatever the draws, until the cap."""
    policy = RetryPolicy(base_ms=100, factor=2.0, max_ms=100_000)
    rng = random.Random(seed)
    delays = {n: policy.delay_ms(n, rng) for n in range(1, 20)}
    below_cap = [n for n in range(1, 19) if policy.ceiling_ms(n + 1) == 2 * policy.ceiling_ms(n)]
    assert below_cap == list(range(1, 10))  # 100 ms * 2**9 = 51.2 s; 102.4 s is capped
    for n in below_cap:
        assert delays[n + 1] >= delays[n]
    assert delays[10] > policy.ceiling_ms(1)
    assert all(policy.max_ms // 2 <= delays[n] <= policy.max_ms for n in range(11, 20))


@settings(max_examples=200, deadline=None)
@given(policy=POLICIES, n=st.integers(1, 64))
def test_ceiling_is_monotone_in_the_retry_number(policy: RetryPolicy, n: int) -> None:
    """The ceiling never shrinks from one retry to the next and never exceeds max_ms."""
    assert policy.ceiling_ms(n) <= policy.ceiling_ms(n + 1) <= policy.max_ms


def test_delay_is_jittered_across_seeds() -> None:
    """The same retry number gives many different delays over different seeds, spread widely."""
    policy = RetryPolicy()
    delays = [policy.delay_ms(3, random.Random(seed)) for seed in range(200)]
    assert len(set(delays)) > 100
    assert min(delays) < 2_500 and max(delays) > 3_500
    assert all(2_000 <= d <= 4_000 for d in delays)


def test_delay_uses_only_the_given_rng() -> None:
    """Two generators with the same seed give the same delays (no hidden randomness)."""
    policy = RetryPolicy(base_ms=500, factor=3.0, max_ms=60_000)
    first = [policy.delay_ms(n, random.Random(7)) for n in range(1, 10)]
    second = [policy.delay_ms(n, random.Random(7)) for n in range(1, 10)]
    assert first == second


def test_zero_base_means_no_delay() -> None:
    """A policy with base_ms 0 retries immediately."""
    policy = RetryPolicy(base_ms=0, factor=2.0, max_ms=0)
    assert {policy.delay_ms(n, random.Random(n)) for n in range(1, 50)} == {0}


def test_factor_one_gives_a_constant_ceiling() -> None:
    """With factor 1 every retry's ceiling is base_ms (within the first 65 retries)."""
    policy = RetryPolicy(base_ms=2_000, factor=1.0, max_ms=300_000)
    assert {policy.ceiling_ms(n) for n in range(1, 66)} == {2_000}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_ms": -1}, "base_ms"),
        ({"base_ms": -1_000, "max_ms": 0}, "base_ms"),
        ({"factor": 0.99}, "factor"),
        ({"factor": 0.0}, "factor"),
        ({"factor": -2.0}, "factor"),
        ({"base_ms": 1_000, "max_ms": 999}, "max_ms"),
        ({"max_ms": 0}, "max_ms"),
    ],
)
def test_bad_policies_raise_invalid_input_naming_the_field(
    kwargs: dict[str, float], field: str
) -> None:
    """A negative base, a factor below 1 or a max below base raises InvalidInput for that field."""
    with pytest.raises(InvalidInput) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert (info.value.status_code, info.value.code) == (422, "invalid_input")


def test_boundary_policies_are_accepted() -> None:
    """base 0, factor exactly 1 and max equal to base are valid."""
    policy = RetryPolicy(base_ms=0, factor=1.0, max_ms=0)
    assert policy.ceiling_ms(1) == 0


# -- known bugs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "factor", "n", "expected"),
    [(1_000, 1.0, 66, 1_000), (1_000, 1.01, 100, int(1_000 * 1.01**99)), (0, 2.0, 70, 0)],
)
def test_ceiling_follows_the_formula_past_65_retries(
    base: int, factor: float, n: int, expected: int
) -> None:
    """Past 65 retries the ceiling is still min(max_ms, base_ms * factor**(n-1))."""
    assert RetryPolicy(base_ms=base, factor=factor, max_ms=300_000).ceiling_ms(n) == expected


def test_large_factor_does_not_overflow() -> None:
    """A valid policy with a large factor gives the cap, not OverflowError, at retry 60."""
    policy = RetryPolicy(base_ms=1_000, factor=1e6, max_ms=300_000)
    assert policy.ceiling_ms(60) == 300_000
    assert 150_000 <= policy.delay_ms(60, random.Random(0)) <= 300_000


def test_nan_factor_is_rejected() -> None:
    """A NaN factor is not a valid growth rate and raises InvalidInput for 'factor'."""
    with pytest.raises(InvalidInput) as info:
        RetryPolicy(factor=float("nan"))
    assert info.value.field == "factor"


def test_delay_is_never_below_half_the_ceiling_for_odd_ceilings() -> None:
    """For an odd ceiling d the delay is never below d/2 ('never less than half the step')."""
    policy = RetryPolicy(base_ms=1, factor=1.0, max_ms=1)
    assert all(2 * policy.delay_ms(1, random.Random(seed)) >= 1 for seed in range(100))
