"""Pure pieces of the coordination layer: keys, deadlines, free ids, settings, targets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from northpole.coord import keys
from northpole.coord.client import grpc_target
from northpole.coord.deadline import LeaseDeadline
from northpole.coord.settings import CoordSettings, parse_endpoints
from northpole.coord.workshop import WORKSHOP_IDS, free_ids, parse_workshop_id
from northpole.core.errors import ConfigurationError, InvalidInput


def test_prefix_end_covers_exactly_the_prefix() -> None:
    """The range end of a prefix is the prefix with its last byte incremented."""
    assert keys.prefix_end(b"/a/") == b"/a0"
    assert keys.prefix_end(b"a\xff") == b"b"
    assert keys.prefix_end(b"\xff") == b"\x00"


def test_instance_keys_round_trip() -> None:
    """An instance key splits back into its service and instance id."""
    key = keys.instance_key("/np", "idgen", "host-1")
    assert key == b"/np/services/idgen/host-1"
    assert keys.split_instance_key("/np", key) == ("idgen", "host-1")
    assert keys.split_instance_key("/np", b"/np/services/idgen") is None
    assert keys.split_instance_key("/np", b"/other/services/a/b") is None


def test_segments_refuse_slashes_and_empty_names() -> None:
    """A name with a slash or nothing in it cannot become a key segment."""
    for bad in ("", "a/b", "-x", "x" * 129):
        with pytest.raises(InvalidInput):
            keys.check_segment(bad, field="service")
    assert keys.check_segment("idgen-1.eu_west", field="service") == "idgen-1.eu_west"


def test_candidate_key_is_lease_id_in_hex() -> None:
    """A candidate's key ends in its lease id as 16 hex digits, as etcd's own election does."""
    assert keys.candidate_key("/np", "matcher", 255) == b"/np/elections/matcher/00000000000000ff"


def test_deadline_is_send_time_plus_ttl_less_margin() -> None:
    """A keepalive sent at t answered with TTL 10 and margin 0.2 allows acting until t + 8."""
    deadline = LeaseDeadline(0.2)
    deadline.renewed(100.0, 10)
    assert deadline.valid(107.99)
    assert not deadline.valid(108.0)
    assert deadline.remaining(103.0) == pytest.approx(5.0)


def test_deadline_never_moves_back_for_late_answers() -> None:
    """An answer to an older keepalive cannot shorten the deadline."""
    deadline = LeaseDeadline(0.2)
    deadline.renewed(100.0, 10)
    deadline.renewed(95.0, 10)
    assert deadline.expires_at == pytest.approx(108.0)


def test_deadline_ignores_zero_ttl_and_expires_on_demand() -> None:
    """A TTL of 0 (lease gone) does not extend; expire() ends it at once."""
    deadline = LeaseDeadline(0.25)
    deadline.renewed(0.0, 4)
    deadline.renewed(10.0, 0)
    assert deadline.expires_at == pytest.approx(3.0)
    deadline.expire()
    assert not deadline.valid(-1e9)


def test_deadline_rejects_margins_outside_range() -> None:
    """A margin of 0 (no safety) or of half the TTL or more is refused."""
    for bad in (0.0, 0.5, -0.1):
        with pytest.raises(ValueError):
            LeaseDeadline(bad)


def test_free_ids_lowest_first_and_none_when_full() -> None:
    """Free ids come lowest first; with all 1,024 taken there are none."""
    assert free_ids([0, 1, 3], limit=6) == [2, 4, 5]
    assert free_ids(range(WORKSHOP_IDS)) == []
    assert free_ids([])[:2] == [0, 1]


def test_parse_workshop_id_ignores_foreign_keys() -> None:
    """Only decimal ids 0-1023 under the prefix are workshop keys."""
    prefix = b"/np/idgen/default/workshops/"
    assert parse_workshop_id(prefix, prefix + b"17") == 17
    assert parse_workshop_id(prefix, prefix + b"1024") is None
    assert parse_workshop_id(prefix, prefix + b"x") is None
    assert parse_workshop_id(prefix, b"/np/other/3") is None


def test_coord_settings_default_to_the_embedded_edition() -> None:
    """Without endpoints the coordination layer is off, with the design's 5 s health checks."""
    settings = CoordSettings()
    assert not settings.enabled
    assert settings.health_interval_s == 5.0
    assert settings.prefix == "/northpole"


def test_coord_settings_validate_prefix_region_and_endpoints() -> None:
    """A relative prefix, a region with a slash or an empty endpoint list is refused."""
    with pytest.raises(ValidationError):
        CoordSettings(prefix="northpole")
    with pytest.raises(ValidationError):
        CoordSettings(region="a/b")
    with pytest.raises(ValidationError):
        CoordSettings(endpoints=[" "])
    assert CoordSettings(prefix="/np/").prefix == "/np"
    assert CoordSettings(endpoints=["a:1"]).enabled


def test_parse_endpoints_splits_commas() -> None:
    """A comma-separated list becomes its trimmed items."""
    assert parse_endpoints(" a:1, b:2,,") == ["a:1", "b:2"]


def test_grpc_target_lists_every_endpoint_as_an_ip() -> None:
    """URLs and host:port forms become one ipv4 target, duplicates dropped."""
    target = grpc_target(["http://127.0.0.1:2379", "127.0.0.1:2380", "localhost:2380"])
    assert target.startswith("ipv4:127.0.0.1:2379,127.0.0.1:2380")


def test_grpc_target_needs_a_port() -> None:
    """An endpoint without a port is a configuration error."""
    with pytest.raises(ConfigurationError):
        grpc_target(["http://127.0.0.1"])
