"""Checking the shape of the input and indexing it for the solvers.

The service validates requests before they reach the matcher, but the pure
functions must not crash on bad data either: anything malformed raises
:class:`~northpole.core.errors.InvalidInput` with ``field`` naming the culprit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from northpole.core.errors import InvalidInput
from northpole.exchange.model import Participant, Rules

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Roster:
    """The participants, checked, with their positions by id.

    Attributes:
        people: The participants in input order.
        index: id -> position in ``people``.
        max_wishes: ``M``, the most wishes any participant listed.
        region_codes: Per person, a small integer per distinct region.
        region_names: The regions, by code.
    """

    people: tuple[Participant, ...]
    index: dict[str, int]
    max_wishes: int
    region_codes: IntArray
    region_names: tuple[str, ...]

    @property
    def n(self) -> int:
        """How many participants there are."""
        return len(self.people)


@dataclass(frozen=True, slots=True)
class Shard:
    """One independent solve: a region (when regional) or the whole exchange.

    Attributes:
        region: The region's name, or ``None`` when the exchange is solved at once.
        members: Positions (in the roster) of the people in this solve, ascending.
    """

    region: str | None
    members: IntArray


def _check_rules(rules: Rules) -> None:
    if not isinstance(rules, Rules):
        raise InvalidInput("rules must be a Rules record", field="rules")
    tol = rules.budget_tolerance
    if tol is not None and (
        isinstance(tol, bool)
        or not isinstance(tol, int | float)
        or not math.isfinite(tol)
        or tol < 0
    ):
        raise InvalidInput(
            f"budget_tolerance must be a finite number >= 0 or null, not {tol!r}",
            field="budget_tolerance",
        )


def _check_person(p: object) -> Participant:
    if not isinstance(p, Participant):
        raise InvalidInput(f"not a participant: {p!r}", field="participants")
    if not isinstance(p.id, str) or not p.id:
        raise InvalidInput(f"participant ids must be non-empty strings: {p.id!r}", field="id")
    if not isinstance(p.region, str):
        raise InvalidInput(f"{p.id}: region must be a string", field="region")
    b = p.budget
    if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0:
        raise InvalidInput(f"{p.id}: budget must be a positive number, not {b!r}", field="budget")
    if p.group is not None and not isinstance(p.group, str):
        raise InvalidInput(f"{p.id}: group must be a string or null", field="group")
    return p


def _check_references(people: Sequence[Participant], index: dict[str, int]) -> None:
    known = index.keys()
    has = index.__contains__
    for p in people:
        excl = p.exclusions
        if excl and not known >= (excl if isinstance(excl, set | frozenset) else set(excl)):
            unknown = sorted(str(x) for x in excl if x not in index)
            raise InvalidInput(
                f"{p.id} excludes unknown participant(s): {', '.join(unknown)}",
                field="exclusions",
            )
        wishes = p.preferences
        if not wishes:
            continue
        if not all(map(has, wishes)):
            unknown = [str(x) for x in wishes if x not in index]
            raise InvalidInput(
                f"{p.id} wishes for unknown participant(s): {', '.join(unknown)}",
                field="preferences",
            )
        if len(set(wishes)) != len(wishes):
            raise InvalidInput(f"{p.id} lists a wish more than once", field="preferences")


def build_roster(participants: Sequence[Participant], rules: Rules) -> Roster:
    """Check the input's shape and index it.

    Raises:
        InvalidInput: Duplicate or empty ids, non-positive budgets, unknown ids
            in exclusions or preferences, a repeated wish, or a negative
            budget tolerance; ``field`` names which.
    """
    _check_rules(rules)
    try:
        people = tuple(participants)
    except TypeError as exc:
        raise InvalidInput("participants must be a list", field="participants") from exc
    index: dict[str, int] = {}
    regions: dict[str, int] = {}
    codes = np.empty(len(people), dtype=np.int64)
    for pos, p in enumerate(people):
        _check_person(p)
        if p.id in index:
            raise InvalidInput(f"duplicate participant id {p.id!r}", field="participants")
        index[p.id] = pos
        codes[pos] = regions.setdefault(p.region, len(regions))
    _check_references(people, index)
    max_wishes = max((len(p.preferences) for p in people), default=0)
    return Roster(people, index, max_wishes, codes, tuple(regions))


def shards_of(roster: Roster, rules: Rules) -> list[Shard]:
    """Split the exchange into independent solves: one per region when ``rules.regional``."""
    if not rules.regional:
        return [Shard(None, np.arange(roster.n, dtype=np.int64))]
    order = np.argsort(roster.region_codes, kind="stable")
    bounds = np.flatnonzero(np.diff(roster.region_codes[order])) + 1
    groups = np.split(order, bounds) if roster.n else []
    shards = [Shard(roster.region_names[int(roster.region_codes[g[0]])], g) for g in groups]
    return sorted(shards, key=lambda s: s.region or "")
