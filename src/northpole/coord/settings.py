"""The ``coord`` settings group: where etcd is and how leases behave.

With ``endpoints`` unset (the default) northpole runs as the embedded edition
and nothing here is used. Environment variables use the usual nesting, for
example ``NORTHPOLE_COORD__ENDPOINTS='["http://10.0.0.5:2379"]'``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from northpole.coord.keys import DEFAULT_ROOT, check_root, check_segment
from northpole.core.errors import InvalidInput


def parse_endpoints(text: str) -> list[str]:
    """Split a comma-separated endpoint list (``"h1:2379,h2:2379"``) into its items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _segment(value: str, field: str) -> str:
    try:
        return check_segment(value, field=field)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


class CoordSettings(BaseModel):
    """etcd coordination (cluster edition).

    Attributes:
        endpoints: etcd client URLs (``http://host:port`` or ``host:port``); ``None``
            selects the embedded edition, with no etcd at all.
        prefix: Root of every key northpole writes (see :mod:`northpole.coord.keys`).
        lease_ttl_s: TTL of the leases behind service registrations and workshop ids.
            A dead instance leaves the registry, and frees its workshop id, within it.
        election_ttl_s: TTL of a leader election candidate's lease; a killed leader is
            replaced within about this long. etcd raises a TTL below its minimum
            (1.5 election timeouts, rounded up to whole seconds) to that minimum.
        safety_margin_ratio: The share of a lease's TTL its holder gives up: it stops
            acting at ``last keepalive sent + TTL x (1 - ratio)`` on its monotonic clock.
        health_interval_s: How often a registered instance runs its health check.
        request_timeout_s: Deadline of each etcd request.
        region: The Gift ID region: workshop ids are leased per region (see
            ``docs/coordination.md`` for what regions with different epochs guarantee).
        resolver_cache_s: How long the resolver may serve a cached list of instances.
        instance_id: This process's id in the registry (default ``<host>-<pid>``).
        advertise_address: The address other services use to reach this one
            (default ``http://<http.host>:<http.port>``).
    """

    endpoints: list[str] | None = None
    prefix: str = DEFAULT_ROOT
    lease_ttl_s: int = Field(default=10, ge=1, le=3600)
    election_ttl_s: int = Field(default=1, ge=1, le=3600)
    safety_margin_ratio: float = Field(default=0.2, gt=0.0, lt=0.5)
    health_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    request_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)
    region: str = "default"
    resolver_cache_s: float = Field(default=1.0, ge=0.0, le=60.0)
    instance_id: str | None = None
    advertise_address: str | None = None

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [item.strip() for item in value if item.strip()]
        if not cleaned:
            raise ValueError("give at least one etcd endpoint, or leave it unset")
        return cleaned

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            return check_root(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _segment(value, "region")

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        return None if value is None else _segment(value, "instance_id")

    @property
    def enabled(self) -> bool:
        """Whether etcd is configured (the cluster edition)."""
        return self.endpoints is not None
