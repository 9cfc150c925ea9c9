"""The task queue: the design's Task, its state machine, scheduling, stores, API and workers.

Pure parts (no I/O): :mod:`.model`, :mod:`.transitions`, :mod:`.retry`,
:mod:`.scheduler`. Ports: :mod:`.store` (task storage) and :mod:`.events`
(state-change events). Adapters: :mod:`.sqlite_store` (embedded edition).
"""
