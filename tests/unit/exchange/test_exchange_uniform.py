"""Random among equals: without wishes, small exchanges draw uniformly from all valid matchings."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from exchange_oracle import brute
from scipy.stats import chisquare

from northpole.exchange.matching import match
from northpole.exchange.model import Participant, Rules

#: Draws per valid matching: about 200 expected hits in each cell of the test.
PER_CELL = 200
#: The p-value below which uniformity is rejected (seeded, so never flaky).
ALPHA = 1e-3


def five(**overrides: object) -> list[Participant]:
    """Five people in one region, with optional per-person fields by id."""
    out = []
    for i in range(5):
        extra = overrides.get(f"p{i}", {})
        out.append(Participant(id=f"p{i}", region="north", budget=20.0, **extra))  # type: ignore[arg-type]
    return out


CASES = {
    "no exclusions": (five(), Rules()),
    "exclusions and a household": (
        five(
            p0={"exclusions": frozenset({"p1"})},
            p2={"exclusions": frozenset({"p0", "p4"})},
            p3={"group": "home"},
            p4={"group": "home"},
        ),
        Rules(),
    ),
    "single cycle": (five(), Rules(single_cycle=True)),
    "no reciprocal with an exclusion": (
        five(p1={"exclusions": frozenset({"p2"})}),
        Rules(no_reciprocal=True),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_draws_are_uniform_over_all_valid_matchings(name: str) -> None:
    """A chi-square test over many seeded draws does not reject uniformity (p > 1e-3)."""
    ps, rules = CASES[name]
    valid = brute(ps, rules).optimal  # no wishes: every valid matching is optimal
    assert len(valid) > 2
    keys = [tuple(sorted(v.items())) for v in valid]
    rng = random.Random(20_241_224)
    seen = Counter(
        tuple(sorted(match(ps, rules, rng=rng).pairs.items())) for _ in range(PER_CELL * len(keys))
    )
    assert set(seen) == set(keys)
    result = chisquare([seen[k] for k in keys])
    assert result.pvalue > ALPHA, (name, result)


def test_a_biased_draw_would_be_rejected() -> None:
    """The same test rejects a sampler that draws one matching twice as often (its power)."""
    ps, rules = CASES["no exclusions"]
    valid = brute(ps, rules).optimal
    counts = [PER_CELL] * len(valid)
    counts[0] = 2 * PER_CELL
    assert chisquare(counts).pvalue < ALPHA
