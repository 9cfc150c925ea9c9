"""The message bus port: events between parts, in-process today (NATS in the cluster edition)."""

from northpole.bus.port import EventBus, InProcessBus, Subscription

__all__ = ["EventBus", "InProcessBus", "Subscription"]
