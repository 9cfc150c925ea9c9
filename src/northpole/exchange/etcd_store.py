"""The cluster edition's exchange store: the etcd-shaped port on etcd itself.

Every store key ``k`` is the etcd key ``{root}{k}`` (UTF-8), with ``root`` the
``coord.prefix`` (``/northpole``), so ``/exchanges/2026/7/state`` lives at
``/northpole/exchanges/2026/7/state`` and the store key
``/elections/matcher/<lease>`` *is* the matcher election's candidate key
(:mod:`northpole.coord.keys`): a transaction can compare a leader's fencing
token like any other key.

The port maps one-to-one onto etcd's API:

* ``get`` and ``range`` are Range requests; a range is read in pages of
  :data:`PAGE` keys, every page at the revision of the first, so a range of
  100,000 sealed matches is one consistent snapshot without a giant message;
* ``get_many`` is transactions of ``Get`` operations, all at one revision;
* ``txn`` is one Txn: each :class:`~northpole.exchange.store.Compare` becomes
  ``mod_revision(key) == r`` (``0``: absent), operations on one key are reduced
  to the last one (etcd refuses two operations on one key), and etcd applies
  the rest atomically under one new revision.

**Revisions**: a new etcd cluster is at revision 1 with no key written, while
the port says a new store is at 0, so this store reports etcd's revisions less
one (and adds it back in compares). Revisions stay global and comparable
within one cluster.

**Limits**: etcd refuses a transaction of more than ``--max-txn-ops``
operations (128 by default) or a request over ``--max-request-bytes``
(1.5 MiB). :meth:`EtcdExchangeStore.txn` checks the first itself
(``max_txn_ops``) and raises :class:`TransactionTooLarge`. The embedded
one-transaction commit of :mod:`northpole.exchange.service` therefore fits
only small exchanges on etcd; the matcher replicas commit in batches behind one
small transaction (:mod:`northpole.exchange.twophase`), which fits the
defaults whatever the exchange's size.
"""

from __future__ import annotations

from collections.abc import Sequence

from northpole.coord.client import Compare as EtcdCompare
from northpole.coord.client import Delete as EtcdDelete
from northpole.coord.client import EtcdClient, Get
from northpole.coord.client import KeyValue as EtcdKeyValue
from northpole.coord.client import Put as EtcdPut
from northpole.coord.keys import prefix_end
from northpole.core.errors import InvalidInput, Unavailable
from northpole.exchange.store import (
    Compare,
    Delete,
    KeyValue,
    Operation,
    Put,
    RangeResult,
    TxnResult,
)

#: Keys read per Range request of a long range (all at one revision).
PAGE = 1_000
#: Keys read per transaction of a multi-get.
GET_BATCH = 100
#: etcd's default ``--max-txn-ops``.
DEFAULT_MAX_TXN_OPS = 128
#: etcd revision of a new cluster, where nothing was written yet: store revision 0.
BASE_REVISION = 1


class TransactionTooLarge(InvalidInput):
    """A transaction has more operations than etcd accepts in one (``--max-txn-ops``)."""

    code = "transaction_too_large"


class EtcdExchangeStore:
    """The :class:`~northpole.exchange.store.ExchangeStore` on etcd.

    Args:
        client: An etcd client; the store closes it only if ``owns_client``.
        root: Prefix of every key (``coord.prefix``; ``""``: none).
        max_txn_ops: The cluster's ``--max-txn-ops``: larger transactions are refused here.
        owns_client: Close ``client`` with the store.
    """

    def __init__(
        self,
        client: EtcdClient,
        *,
        root: str = "",
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.root = root
        self.max_txn_ops = max_txn_ops
        self._root = root.encode()
        self._owns_client = owns_client
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        root: str = "",
        timeout_s: float = 2.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
    ) -> EtcdExchangeStore:
        """Open a client of its own on ``endpoints`` and return a store on it."""
        client = await EtcdClient(endpoints, timeout_s=timeout_s).open()
        return cls(client, root=root, max_txn_ops=max_txn_ops, owns_client=True)

    async def close(self) -> None:
        """Refuse further calls; close the client if this store opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self.client.close()

    def fence(self, etcd_key: bytes, token: int) -> Compare:
        """Return a compare that holds while ``etcd_key`` is still the key put at ``token``.

        For a leader's fencing token (:meth:`northpole.coord.election.Leadership.fence`):
        the candidate key is written once, so its mod revision is its create
        revision. The key must lie under this store's root.

        Raises:
            InvalidInput: The key is outside the root.
        """
        if not etcd_key.startswith(self._root):
            raise InvalidInput(f"{etcd_key!r} is not under the store's root {self.root!r}")
        return Compare(etcd_key[len(self._root) :].decode(), token - BASE_REVISION)

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the etcd exchange store is closed")

    def _key(self, key: str) -> bytes:
        return self._root + key.encode()

    def _from_etcd(self, kv: EtcdKeyValue) -> KeyValue:
        return KeyValue(
            key=kv.key[len(self._root) :].decode(),
            value=kv.value,
            create_revision=kv.create_revision - BASE_REVISION,
            mod_revision=kv.mod_revision - BASE_REVISION,
        )

    async def get(self, key: str) -> KeyValue | None:
        """Return ``key``, or ``None`` if it does not exist."""
        self._check_open()
        found = await self.client.get(self._key(key))
        return None if found is None else self._from_etcd(found)

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """Return those of ``keys`` that exist, read at one revision."""
        self._check_open()
        wanted = list(dict.fromkeys(keys))
        found: dict[str, KeyValue] = {}
        revision = 0
        for start in range(0, len(wanted), GET_BATCH):
            batch = wanted[start : start + GET_BATCH]
            result = await self.client.txn([], [Get(self._key(k), revision) for k in batch])
            revision = revision or result.revision
            for kvs in result.ranges:
                for kv in kvs:
                    item = self._from_etcd(kv)
                    found[item.key] = item
        return found

    async def range(self, prefix: str, *, limit: int | None = None) -> RangeResult:
        """Return the keys starting with ``prefix`` (at most ``limit``), in key order."""
        self._check_open()
        start = self._key(prefix)
        end = prefix_end(start)
        if not start:  # no root and the empty prefix: every key
            start = b"\x00"
        wanted = None if limit is None else max(limit, 0)
        if wanted == 0:
            return RangeResult(kvs=[], revision=await self.revision())
        kvs: list[KeyValue] = []
        revision = 0
        while True:
            page = PAGE if wanted is None else min(PAGE, wanted - len(kvs))
            result = await self.client.range(start, end, revision=revision, limit=page)
            revision = revision or result.revision
            kvs.extend(self._from_etcd(kv) for kv in result.kvs)
            if len(result.kvs) < page or (wanted is not None and len(kvs) >= wanted):
                break
            start = result.kvs[-1].key + b"\x00"
        return RangeResult(kvs=kvs, revision=revision - BASE_REVISION)

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> TxnResult:
        """Apply ``operations`` under one new revision if every compare holds.

        Raises:
            TransactionTooLarge: More distinct keys than ``max_txn_ops``.
            Unavailable: etcd failed or refused the request.
        """
        self._check_open()
        last: dict[str, Operation] = {}
        for op in operations:
            last.pop(op.key, None)  # the last operation on a key counts, in its place
            last[op.key] = op
        if len(last) > self.max_txn_ops:
            raise TransactionTooLarge(
                f"a transaction of {len(last)} operations is more than etcd accepts "
                f"({self.max_txn_ops}); commit large exchanges in batches",
                field="operations",
            )
        checks = [
            EtcdCompare.modified_at(
                self._key(c.key), c.mod_revision + BASE_REVISION if c.mod_revision else 0
            )
            for c in compares
        ]
        ops: list[EtcdPut | EtcdDelete] = [
            EtcdPut(self._key(op.key), op.value)
            if isinstance(op, Put)
            else EtcdDelete(self._key(op.key))
            for op in last.values()
            if isinstance(op, Put | Delete)
        ]
        result = await self.client.txn(checks, ops)
        return TxnResult(succeeded=result.succeeded, revision=result.revision - BASE_REVISION)

    async def revision(self) -> int:
        """Return the store's current revision (etcd's, less one)."""
        self._check_open()
        result = await self.client.range(self._key("/"), limit=1)
        return result.revision - BASE_REVISION
