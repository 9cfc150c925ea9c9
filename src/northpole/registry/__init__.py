"""The gift registry: gifts, their status lifecycle, SQLite and partitioned PostgreSQL.

Public API::

    from northpole.registry import Gift, GiftStatus, RegistrySettings
"""

from northpole.registry.model import Gift, GiftStatus
from northpole.registry.settings import RegistrySettings

__all__ = ["Gift", "GiftStatus", "RegistrySettings"]
