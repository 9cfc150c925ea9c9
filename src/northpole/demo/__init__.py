"""``northpole demo``: drive a running system through one season, over its public API."""
