"""Fixtures of the matcher replica tests: etcd (``tests/etcd_servers.py``) and replica processes."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parents[1]), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from replica_procs import ReplicaCluster  # noqa: E402

from etcd_servers import EtcdCluster, etcd, etcd_cluster  # noqa: E402

__all__ = ["etcd", "etcd_cluster", "replicas"]


@pytest.fixture
def replicas(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[ReplicaCluster]:
    """A place to start matcher replicas on a 3-member etcd; all killed after the test."""
    cluster = ReplicaCluster(tmp_path / "replicas", etcd_cluster.endpoints)
    try:
        yield cluster
    finally:
        cluster.kill_all()
