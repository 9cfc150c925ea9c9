"""Keys and values of the matcher replicas' two-phase commit (beside :mod:`~.keys`).

Under the exchange's prefix ``{ex} = /exchanges/{year}/{exchange_id}``::

    {ex}/proposal/{proposal_id}             the proposal record (JSON, below)
    {ex}/sealed/{proposal_id}/{giver}       a sealed match of it (as .../matches/{giver})
    {ex}/votes/{proposal_id}/{replica}      one replica's vote on it
    {ex}/committed                          {"proposal": id}: the proposal the exchange committed

The proposal record is ``{"proposal", "exchange_id", "leader", "token",
"state_revision", "count", "cost", "optimal", "commitment_root",
"created_ms", "prepared"}``: ``state_revision`` is the revision of the
MATCHING state it was made for, ``token`` the leader's fencing token, and
``prepared`` turns true in the write that follows the last batch of sealed
matches (the proposal is complete). A vote is ``{"replica", "vote"
("yes"|"no"), "problems", "cost", "reference_cost"}``: counts and costs only,
never a pair. Nothing here holds a plaintext pair: the sealed values are the
same sealed boxes and commitments as the one-transaction commit writes.

A reader of a COMMITTED exchange finds its matches through ``{ex}/committed``
(absent: the embedded edition's ``{ex}/matches/``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from northpole.exchange.keys import CorruptValue, decode_object, exchange_prefix

YES = "yes"
NO = "no"


def proposals_prefix(year: int, exchange_id: str) -> str:
    """Prefix of the exchange's proposal records."""
    return f"{exchange_prefix(year, exchange_id)}proposal/"


def proposal_key(year: int, exchange_id: str, proposal_id: str) -> str:
    """One proposal's record."""
    return proposals_prefix(year, exchange_id) + proposal_id


def sealed_prefix(year: int, exchange_id: str, proposal_id: str) -> str:
    """Prefix of one proposal's sealed matches."""
    return f"{exchange_prefix(year, exchange_id)}sealed/{proposal_id}/"


def sealed_key(year: int, exchange_id: str, proposal_id: str, giver: str) -> str:
    """The sealed match of ``giver`` in one proposal."""
    return sealed_prefix(year, exchange_id, proposal_id) + giver


def votes_prefix(year: int, exchange_id: str, proposal_id: str) -> str:
    """Prefix of the votes on one proposal."""
    return f"{exchange_prefix(year, exchange_id)}votes/{proposal_id}/"


def vote_key(year: int, exchange_id: str, proposal_id: str, replica: int) -> str:
    """One replica's vote on one proposal."""
    return votes_prefix(year, exchange_id, proposal_id) + str(replica)


def committed_key(year: int, exchange_id: str) -> str:
    """Which proposal the exchange committed."""
    return f"{exchange_prefix(year, exchange_id)}committed"


@dataclass(frozen=True, slots=True)
class ProposalRecord:
    """A proposal as stored: what it is for, who made it, what it commits to."""

    proposal: str
    exchange_id: str
    leader: str
    token: int
    state_revision: int
    count: int
    cost: float
    optimal: bool
    commitment_root: str
    created_ms: int
    prepared: bool = False

    def encode(self) -> bytes:
        """Return the stored JSON."""
        return orjson.dumps(asdict(self))


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """One replica's vote: yes or no, with counts and costs (never a pair)."""

    replica: int
    vote: str
    problems: int
    cost: float | None
    reference_cost: float | None

    @property
    def yes(self) -> bool:
        """Whether the replica accepts the proposal."""
        return self.vote == YES

    def encode(self) -> bytes:
        """Return the stored JSON."""
        return orjson.dumps(asdict(self))


def decode_proposal(key: str, value: bytes) -> ProposalRecord:
    """Return the proposal in a stored value."""
    data = decode_object(key, value)
    try:
        return ProposalRecord(
            proposal=str(data["proposal"]),
            exchange_id=str(data["exchange_id"]),
            leader=str(data["leader"]),
            token=int(data["token"]),
            state_revision=int(data["state_revision"]),
            count=int(data["count"]),
            cost=float(data["cost"]),
            optimal=bool(data["optimal"]),
            commitment_root=str(data["commitment_root"]),
            created_ms=int(data["created_ms"]),
            prepared=bool(data.get("prepared", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptValue(f"stored value of {key} is not a proposal") from exc


def decode_vote(key: str, value: bytes) -> VoteRecord:
    """Return the vote in a stored value."""
    data = decode_object(key, value)
    try:
        cost, reference = data.get("cost"), data.get("reference_cost")
        return VoteRecord(
            replica=int(data["replica"]),
            vote=YES if data["vote"] == YES else NO,
            problems=int(data["problems"]),
            cost=None if cost is None else float(cost),
            reference_cost=None if reference is None else float(reference),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptValue(f"stored value of {key} is not a vote") from exc


def encode_committed(proposal_id: str) -> bytes:
    """Return the value of the committed pointer."""
    return orjson.dumps({"proposal": proposal_id})


def decode_committed(key: str, value: bytes) -> str:
    """Return the proposal id in the committed pointer."""
    data = decode_object(key, value)
    proposal = data.get("proposal")
    if not isinstance(proposal, str):
        raise CorruptValue(f"stored value of {key} names no proposal")
    return proposal
