"""Fault tests use the process fixtures of ``tests/integration/northpole_proc.py``."""

import sys
from pathlib import Path

_HELPERS = str(Path(__file__).resolve().parents[1] / "integration")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)

from northpole_proc import procs, pytest_runtest_makereport  # noqa: E402

__all__ = ["procs", "pytest_runtest_makereport"]
