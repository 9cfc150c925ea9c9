"""The Prometheus recording rules are valid and only use metrics the services export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from northpole.core.settings import Settings
from northpole.system import build_app

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULES = DEPLOY / "recording-rules.yml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    return path


def test_rules_pass_promtool_check() -> None:
    """promtool accepts the recording and alerting rules."""
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    """The rules compute the design's names from sample series as their unit tests expect."""
    result = subprocess.run(
        [_promtool(), "test", "rules", str(DEPLOY / "tests" / "recording-rules.test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_reference_only_exported_metrics(tmp_path: Path) -> None:
    """Every gift_id_*_total series the rules read appears on a running app's /metrics."""
    referenced = set(re.findall(r"\b(gift_id_[a-z_]+_total)\b", RULES.read_text()))
    assert referenced, "the rules should read northpole's counters"
    with TestClient(build_app(Settings(data_dir=tmp_path), parts=["idgen"])) as client:
        exported = client.get("/metrics").text
    missing = {name for name in referenced if f"\n{name}" not in exported}
    assert not missing, f"rules read metrics the app does not export: {sorted(missing)}"
