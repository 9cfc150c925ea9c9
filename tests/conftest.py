"""Shared test fixtures: keep NORTHPOLE_* settings from the environment out of every test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_northpole_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every NORTHPOLE_* environment variable for the duration of a test."""
    for name in list(os.environ):
        if name.upper().startswith("NORTHPOLE_"):
            monkeypatch.delenv(name)
