"""The worker pool: claims tasks, runs their handlers, reports how they ended.

It is made of small parts, each one ledger or one loop, composed by :class:`WorkerPool`::

    ┌─────────┐ dispatch ┌────────┐ outcome ┌───────┐
    │ Claimer │─────────▶│ Runner │────────▶│ Acker │
    └────┬────┘          └───┬────┘         └───┬───┘
         │ room?             │ start, finish    │ release once acked
         ▼                   ▼                  ▼
    ┌────────────────────────────────────────────────┐
    │ HeldTasks: each task held, from claim to ack   │
    └────────────────────────────────────────────────┘
                         ▲ holding, started; take away
                  ┌─────────────┐
                  │ Heartbeater │ every lease/3
                  └─────────────┘

The Claimer, the Heartbeater and the Acker call the queue through a
:class:`~northpole.tasks.backends.WorkerBackend` (in-process or HTTP).
Each part is one module:

* ``ledger``: :class:`HeldTasks`, every task the worker holds, from its claim
  until its ack lands or the queue takes it away.
* ``claimer``: the **Claimer** keeps at most ``concurrency + prefetch`` tasks
  queued or running, claiming in batches with a long poll.
* ``runner``: the **Runner** runs at most ``concurrency`` handlers at once:
  async ones as asyncio tasks, sync ones in a thread pool of the same size.
* ``acker``: the **Acker** reports outcomes in batches and retries them while
  the queue is unreachable.
* ``heartbeat``: the **Heartbeater** reports started and held tasks, which
  extends their leases, and takes away the tasks the queue names in
  ``cancel``: their ``cancelled`` event is set and their outcome is never
  reported.
* ``metrics``: :class:`WorkerMetrics`, the worker side's Prometheus metrics.
* ``pool``: :class:`WorkerPool` composes the parts, and drains on
  :meth:`WorkerPool.stop`.

Everything public is importable from this package.
"""

from northpole.tasks.worker.acker import Acker
from northpole.tasks.worker.claimer import Claimer
from northpole.tasks.worker.heartbeat import Heartbeater
from northpole.tasks.worker.ledger import Held, HeldTasks, Phase
from northpole.tasks.worker.metrics import PROCESSING_BUCKETS, WorkerMetrics
from northpole.tasks.worker.pool import PoolLifecycleError, WorkerPool, default_worker_id
from northpole.tasks.worker.runner import Runner

__all__ = [
    "PROCESSING_BUCKETS",
    "Acker",
    "Claimer",
    "Heartbeater",
    "Held",
    "HeldTasks",
    "Phase",
    "PoolLifecycleError",
    "Runner",
    "WorkerMetrics",
    "WorkerPool",
    "default_worker_id",
]
