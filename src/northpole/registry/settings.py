"""Settings of the gift registry (the ``registry`` group: ``NORTHPOLE_REGISTRY__*``).

They are defined in :mod:`northpole.core.settings` with the other groups whose
part depends on the core at import time; this module names them for the part.
"""

from northpole.core.settings import LifecycleTaskTypes, RegistrySettings

__all__ = ["LifecycleTaskTypes", "RegistrySettings"]
