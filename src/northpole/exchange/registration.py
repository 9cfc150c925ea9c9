"""Registration: participants join, change and withdraw while an exchange is in REGISTRATION.

Each write is one optimistic transaction that compares the exchange's state
key (so nothing lands once MATCHING began), the participant keys it creates
(absent: a duplicate id is refused even under a race) and those it references
(unchanged: nobody references someone withdrawn at the same moment). Adding
and withdrawing rewrite the state key too, since it holds the count the
``max_participants`` limit is checked against.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from northpole.core.auth import Principal
from northpole.core.clock import Clock
from northpole.core.errors import Conflict, InvalidInput
from northpole.exchange import keys, policy
from northpole.exchange.keys import ExchangeRecord
from northpole.exchange.model import Participant, Phase
from northpole.exchange.policy import ParticipantNotFound
from northpole.exchange.repository import ExchangeRepository
from northpole.exchange.settings import ExchangeSettings
from northpole.exchange.store import Compare, Delete, KeyValue, Operation, Put


class Registrar:
    """Registers, changes and withdraws participants.

    Args:
        repo: The exchange records.
        settings: Limits (``max_participants``, ``max_batch``).
        clock: Stamps ``updated_ms``.
    """

    def __init__(self, repo: ExchangeRepository, settings: ExchangeSettings, clock: Clock) -> None:
        self._repo = repo
        self._settings = settings
        self._clock = clock

    async def register(
        self,
        exchange_id: str,
        participants: Sequence[Participant],
        principal: Principal,
        *,
        batch: bool,
    ) -> list[Participant]:
        """Register participants, all or none (see ``ExchangeService.register``)."""
        self._check_batch(participants, batch)

        async def attempt() -> list[Participant] | None:
            record, kv = await self._repo.load(exchange_id)
            policy.authorize_register(record, principal, participants)
            policy.require(record, "register participants", Phase.REGISTRATION)
            total = record.participants + len(participants)
            if total > self._settings.max_participants:
                raise InvalidInput(
                    f"the exchange would have {total} participants; at most "
                    f"{self._settings.max_participants} allowed",
                    field="participants",
                )
            ok = await self._insert(record, kv, participants, batch)
            return list(participants) if ok else None

        return await self._repo.retrying(exchange_id, attempt)

    def _check_batch(self, participants: Sequence[Participant], batch: bool) -> None:
        if not participants:
            raise InvalidInput("at least one participant is needed", field="participants")
        if len(participants) > self._settings.max_batch:
            raise InvalidInput(
                f"at most {self._settings.max_batch} participants per request",
                field="participants",
            )
        seen: set[str] = set()
        for index, participant in enumerate(participants):
            policy.check_participant(
                participant, field=functools.partial(policy.field_name, batch, index)
            )
            if participant.id in seen:
                raise InvalidInput(
                    f"participant {participant.id!r} appears twice in the request",
                    field=policy.field_name(batch, index, "id"),
                )
            seen.add(participant.id)

    async def _insert(
        self,
        record: ExchangeRecord,
        kv: KeyValue,
        participants: Sequence[Participant],
        batch: bool,
    ) -> bool:
        ex = record.exchange
        own = {p.id: keys.participant_key(ex.year, ex.id, p.id) for p in participants}
        refs = set().union(*(policy.references(p) for p in participants)) - own.keys()
        ref_keys = {r: keys.participant_key(ex.year, ex.id, r) for r in refs}
        found = await self._repo.store.get_many([*own.values(), *ref_keys.values()])
        for index, participant in enumerate(participants):
            if own[participant.id] in found:
                raise Conflict(
                    f"participant {participant.id!r} is already registered",
                    field=policy.field_name(batch, index, "id"),
                )
        for index, participant in enumerate(participants):
            policy.check_references(
                participant,
                lambda other: other in own or ref_keys[other] in found,
                field=functools.partial(policy.field_name, batch, index),
            )
        updated = replace(
            record,
            participants=record.participants + len(participants),
            updated_ms=self._clock.now_ms(),
        )
        compares = [Compare(kv.key, kv.mod_revision)]
        compares += [Compare(key, 0) for key in own.values()]
        compares += [Compare(k, found[k].mod_revision) for k in ref_keys.values()]
        ops: list[Operation] = [Put(kv.key, keys.encode_state(updated))]
        ops += [Put(own[p.id], keys.encode_participant(p)) for p in participants]
        return (await self._repo.store.txn(compares, ops)).succeeded

    async def update(
        self, exchange_id: str, pid: str, changes: Mapping[str, Any], principal: Principal
    ) -> Participant:
        """Change a participant's fields (see ``ExchangeService.update_participant``)."""
        if "id" in changes:
            raise InvalidInput("a participant's id cannot change", field="id")

        async def attempt() -> Participant | None:
            record, kv = await self._repo.load(exchange_id)
            policy.authorize_for(record, principal, pid)
            policy.require(record, "change participants", Phase.REGISTRATION)
            ex = record.exchange
            current = await self._repo.participant(ex, pid)
            if current is None:
                raise ParticipantNotFound(pid)
            updated = replace(keys.decode_participant(current.key, current.value), **changes)
            policy.check_participant(updated, field=str)
            ref_keys = {
                r: keys.participant_key(ex.year, ex.id, r) for r in policy.references(updated)
            }
            found = await self._repo.store.get_many(list(ref_keys.values()))
            policy.check_references(updated, lambda other: ref_keys[other] in found, field=str)
            compares = [
                Compare(kv.key, kv.mod_revision),
                Compare(current.key, current.mod_revision),
            ]
            compares += [Compare(k, found[k].mod_revision) for k in ref_keys.values()]
            put = Put(current.key, keys.encode_participant(updated))
            ok = (await self._repo.store.txn(compares, [put])).succeeded
            return updated if ok else None

        return await self._repo.retrying(exchange_id, attempt)

    async def remove(self, exchange_id: str, pid: str, principal: Principal) -> None:
        """Withdraw a participant (see ``ExchangeService.remove_participant``)."""

        async def attempt() -> bool | None:
            record, kv = await self._repo.load(exchange_id)
            policy.authorize_for(record, principal, pid)
            policy.require(record, "remove participants", Phase.REGISTRATION)
            ex = record.exchange
            gone = await self._repo.participant(ex, pid)
            if gone is None:
                raise ParticipantNotFound(pid)
            updated = replace(
                record, participants=record.participants - 1, updated_ms=self._clock.now_ms()
            )
            compares = [Compare(kv.key, kv.mod_revision), Compare(gone.key, gone.mod_revision)]
            ops: list[Operation] = [Delete(gone.key), Put(kv.key, keys.encode_state(updated))]
            for other_kv, other in await self._repo.participants(ex):
                if pid in other.exclusions or pid in other.preferences:
                    compares.append(Compare(other_kv.key, other_kv.mod_revision))
                    ops.append(
                        Put(other_kv.key, keys.encode_participant(policy.without(other, pid)))
                    )
            return True if (await self._repo.store.txn(compares, ops)).succeeded else None

        await self._repo.retrying(exchange_id, attempt)

    async def read(self, exchange_id: str, pid: str, principal: Principal) -> Participant:
        """Return a participant's record, to that participant only."""
        policy.authorize_own(principal, pid, "registration")
        record, _ = await self._repo.load(exchange_id)
        kv = await self._repo.participant(record.exchange, pid)
        if kv is None:
            raise ParticipantNotFound(pid)
        return keys.decode_participant(kv.key, kv.value)
