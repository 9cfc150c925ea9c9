"""Pure helpers of ``northpole services``: endpoint parsing, rows and the table."""

from __future__ import annotations

import pytest
from rich.console import Console

from northpole.cli.services_commands import describe, endpoints_from, render_table
from northpole.coord.client import KeyValue
from northpole.coord.discovery import Instance, InstanceRecord, instances_from
from northpole.core.errors import InvalidInput


def _instance(health: str = "healthy") -> Instance:
    record = InstanceRecord("http://a:1", 1000.0, health, 1090.0, "0.1.0", "queue down")
    return Instance("tasks", "n1", record)


def test_endpoints_accept_json_list_or_commas() -> None:
    """The settings' JSON form and a comma list give the same endpoints."""
    assert endpoints_from('["a:1", "b:2"]') == ["a:1", "b:2"]
    assert endpoints_from("a:1,b:2") == ["a:1", "b:2"]


def test_endpoints_missing_is_a_clear_error() -> None:
    """No endpoints at all names the option and the variable."""
    with pytest.raises(InvalidInput, match="NORTHPOLE_COORD__ENDPOINTS"):
        endpoints_from(None)


def test_row_reports_age_and_time_since_check() -> None:
    """A row carries the instance's age and how long ago it was checked."""
    row = describe(_instance(), now=1100.0)
    assert row["age_s"] == 100.0 and row["checked_s_ago"] == 10.0
    assert row["service"] == "tasks" and row["health"] == "healthy"


def test_table_shows_why_an_instance_is_unhealthy() -> None:
    """An unhealthy row shows its detail next to the health."""
    console = Console(record=True, width=200)
    console.print(render_table([describe(_instance("unhealthy"), now=5000.0)]))
    text = console.export_text()
    assert "unhealthy (queue down)" in text and "1h6m" in text


def test_record_round_trips_and_rejects_garbage() -> None:
    """A record survives encode/decode; a foreign value decodes to None."""
    record = _instance().record
    assert InstanceRecord.decode(record.encode()) == record
    assert InstanceRecord.decode(b"[1]") is None
    kvs = [KeyValue(b"/northpole/services/tasks/n1", record.encode(), 1, 1, 0)]
    assert instances_from("/northpole", kvs) == [_instance()]
