"""Fixtures for tests that run real ``northpole`` processes: see ``northpole_proc``."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from northpole_proc import procs, pytest_runtest_makereport  # noqa: E402

__all__ = ["procs", "pytest_runtest_makereport"]
