"""The cost of a gift, as documented in ``docs/matching.md`` ("The cost").

Costs are small non-negative integers, so that many matchings tie and the
matcher's random choice among equals means something:

* a giver's wish of rank ``r`` (1 is the best) costs ``r - 1``;
* any other receiver costs ``W = M + 1``, where ``M`` is the largest number of
  wishes any participant of the exchange listed (so ``W = 1`` when nobody has
  wishes, and an unwished receiver always costs more than any wish);
* a gift that goes against ``Rules.region_preference`` (to another region when
  it is ``same``, within the region when it is ``other``) adds
  :data:`REGION_PENALTY`.

The cost of a matching is the sum over its gifts.
"""

from __future__ import annotations

from northpole.exchange.model import RegionPreference, Rules

#: Added to a gift that goes against the region preference.
REGION_PENALTY = 1


def unwished_cost(max_wishes: int) -> int:
    """Return ``W``, the cost of giving to someone one did not wish for."""
    return max_wishes + 1


def region_penalty(rules: Rules, same_region: bool) -> int:
    """Return the penalty for one gift within (``same_region``) or across regions."""
    if rules.region_preference is RegionPreference.SAME:
        return 0 if same_region else REGION_PENALTY
    if rules.region_preference is RegionPreference.OTHER:
        return REGION_PENALTY if same_region else 0
    return 0


def gift_cost(*, rank: int | None, same_region: bool, rules: Rules, max_wishes: int) -> int:
    """Return the cost of one gift.

    Args:
        rank: The receiver's rank in the giver's wishes (1 is the best), or
            ``None`` when the giver did not wish for them.
        same_region: Whether giver and receiver are in the same region.
        rules: The exchange's rules (for the region preference).
        max_wishes: ``M``, the most wishes any participant listed.
    """
    base = unwished_cost(max_wishes) if rank is None else rank - 1
    return base + region_penalty(rules, same_region)
