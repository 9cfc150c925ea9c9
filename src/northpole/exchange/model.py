"""The exchange's records: participants, rules, phases, and what a solve returns.

These are plain values shared by the pure matcher (:mod:`northpole.exchange.matching`,
:mod:`northpole.exchange.explain`) and the service around it (store, API, crypto).
Nothing here does I/O.

Vocabulary: a *giver* gives to a *receiver*; every participant is both, once.
A matching is *valid* when it satisfies every hard constraint of :class:`Rules`
and each participant's own ``exclusions`` and ``group``; among valid matchings
the matcher returns one of minimum total cost (the cost is defined in
``docs/matching.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from northpole.core.errors import InvalidInput


class Phase(StrEnum):
    """Where an exchange is: REGISTRATION -> MATCHING -> COMMITTED, or CANCELLED."""

    REGISTRATION = "REGISTRATION"
    MATCHING = "MATCHING"
    COMMITTED = "COMMITTED"
    CANCELLED = "CANCELLED"


class RegionPreference(StrEnum):
    """A soft preference about the receiver's region, relative to the giver's."""

    NONE = "none"  # indifferent
    SAME = "same"  # rather give within one's own region
    OTHER = "other"  # rather give to another region


@dataclass(frozen=True, slots=True)
class Participant:
    """One person in an exchange (the design's participant record).

    Attributes:
        id: Unique within the exchange (1-100 characters).
        region: Where they are; with ``Rules.allow_cross_region`` off, people are
            matched only within their region.
        budget: What they mean to spend, a positive number (one currency per exchange).
        exclusions: Ids this participant must not give to (directed).
        preferences: Ids this participant would like to give to, best first (soft).
        group: A household or team: nobody gives to someone of their own group
            (a shorthand for mutual exclusions). ``None``: no group.
        public_key: X25519 public key, base64 (32 bytes); their match is sealed to it.
    """

    id: str
    region: str
    budget: float
    exclusions: frozenset[str] = frozenset()
    preferences: tuple[str, ...] = ()
    group: str | None = None
    public_key: str = ""


@dataclass(frozen=True, slots=True)
class Rules:
    """An exchange's hard constraints and soft preferences.

    Attributes:
        budget_tolerance: Largest allowed difference between a giver's and a
            receiver's budget (same currency); ``None``: budgets do not matter.
        no_reciprocal: Never both A -> B and B -> A.
        single_cycle: The gifts form one circle through everybody (of a region,
            when regions are solved apart).
        cross_region_only: Nobody gives within their own region (implies the
            exchange is solved across regions).
        allow_cross_region: Solve the whole exchange at once instead of one
            solve per region.
        region_preference: Soft: prefer the same region, another one, or neither.
    """

    budget_tolerance: float | None = None
    no_reciprocal: bool = False
    single_cycle: bool = False
    cross_region_only: bool = False
    allow_cross_region: bool = False
    region_preference: RegionPreference = RegionPreference.NONE

    @property
    def regional(self) -> bool:
        """Whether each region is solved on its own."""
        return not (self.allow_cross_region or self.cross_region_only)


@dataclass(frozen=True, slots=True)
class Matching:
    """A valid matching of minimum cost.

    Attributes:
        pairs: giver id -> receiver id, for every participant.
        cost: Its total cost (see ``docs/matching.md``).
        optimal: True when ``cost`` is proven minimal among valid matchings; False
            only where the docs say the guarantee is weaker (``single_cycle`` or
            ``no_reciprocal`` above 12 people per shard, sparse shards above
            50,000 people, sampled candidates) and the lower bound was not reached.
    """

    pairs: Mapping[str, str]
    cost: float
    optimal: bool = True


class ExplanationKind(StrEnum):
    """Why no valid matching exists."""

    HALL = "hall"  # these givers can only give to fewer receivers than there are of them
    RULE = "rule"  # a rule makes it impossible whatever the candidates (e.g. single_cycle, n=2)
    TOO_FEW = "too_few"  # a region (or the exchange) has fewer than 2 participants


@dataclass(frozen=True, slots=True)
class Explanation:
    """A reason a person can act on, and the participants it names.

    For ``HALL``, either ``givers`` (k of them) can only give to ``receivers``
    (j < k of them), so at least ``k - j`` of those givers cannot be served, or
    the mirror: only ``givers`` (j) may give to ``receivers`` (k > j); the longer
    list is the k. The set is minimal (no part of it is a witness on its own),
    though not always the smallest (see ``docs/matching.md``). For ``RULE`` and
    ``TOO_FEW`` both lists name the people concerned.
    """

    kind: ExplanationKind
    message: str
    givers: tuple[str, ...] = ()
    receivers: tuple[str, ...] = ()
    rule: str | None = None
    region: str | None = None

    def to_details(self) -> dict[str, Any]:
        """Return the explanation as the JSON ``error.details`` of a 422."""
        return {
            "kind": self.kind.value,
            "givers": list(self.givers),
            "receivers": list(self.receivers),
            "rule": self.rule,
            "region": self.region,
        }


class Infeasible(InvalidInput):
    """No matching satisfies every hard constraint; ``explanation`` says why (422)."""

    code = "infeasible"

    def __init__(self, explanation: Explanation, *, field: str | None = "participants") -> None:
        super().__init__(explanation.message, field=field, details=explanation.to_details())
        self.explanation = explanation


@dataclass(frozen=True, slots=True)
class Exchange:
    """An exchange as stored (participants and matches are stored apart)."""

    id: str
    name: str
    year: int
    region: str
    organizer: str
    rules: Rules = field(default_factory=Rules)
    phase: Phase = Phase.REGISTRATION
    created_ms: int = 0
