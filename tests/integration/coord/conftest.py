"""etcd fixtures for the coordination tests: see ``tests/etcd_servers.py``."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from etcd_servers import etcd, etcd_cluster  # noqa: E402

__all__ = ["etcd", "etcd_cluster"]
