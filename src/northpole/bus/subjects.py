"""Every subject on the message bus, and the stream that keeps them, named in one place.

=======================  =====================================  ==========================
subject                  payload (``proto/northpole/v1``)        published by
=======================  =====================================  ==========================
``gift.created``         ``events.proto`` GiftCreated           the gift registry (outbox)
``gift.status_changed``  ``events.proto`` GiftStatusChanged     the gift registry (outbox)
``task.state_changed``   ``task.proto`` TaskStateChanged        the task queue
``exchange.committed``   ``events.proto`` ExchangeCommitted     the exchange matcher
=======================  =====================================  ==========================
"""

from __future__ import annotations

GIFT_CREATED = "gift.created"
GIFT_STATUS_CHANGED = "gift.status_changed"
TASK_STATE_CHANGED = "task.state_changed"
EXCHANGE_COMMITTED = "exchange.committed"

#: Every subject above.
ALL_SUBJECTS = (GIFT_CREATED, GIFT_STATUS_CHANGED, TASK_STATE_CHANGED, EXCHANGE_COMMITTED)

#: The JetStream stream that keeps every event (cluster edition).
STREAM = "NORTHPOLE"
#: Subjects the stream captures (NATS wildcards).
STREAM_SUBJECTS = ("gift.>", "task.>", "exchange.>")
