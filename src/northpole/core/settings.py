"""Settings, read once at start-up from ``NORTHPOLE_*`` environment variables.

Nested groups use a double underscore: ``NORTHPOLE_IDGEN__WORKSHOP_ID=7``.
Nothing in northpole builds :class:`Settings` at import time; the CLI builds it
once and passes it down.

The groups of the exchange service, the matcher replicas and etcd
coordination are defined next to their code (``*/settings.py``): leaf modules
holding nothing but pydantic models, which is all this module imports of them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from northpole.coord.settings import CoordSettings
from northpole.exchange.replica_settings import ReplicaSettings
from northpole.exchange.settings import ExchangeSettings

#: 2025-01-01T00:00:00Z in Unix milliseconds: the default Gift ID epoch.
DEFAULT_EPOCH_MS = 1_735_689_600_000


class LogFormat(StrEnum):
    """How log lines are rendered."""

    JSON = "json"
    CONSOLE = "console"


class AuthSettings(BaseModel):
    """JWT authentication.

    In the embedded edition, leave ``secret`` and ``secret_file`` unset: a random
    key is created in the data directory on first start. In the cluster edition
    give every instance the same ``secret`` (or ``secret_file``).
    """

    secret: SecretStr | None = None
    secret_file: Path | None = None
    algorithm: str = "HS256"
    issuer: str = "northpole"
    audience: str = "northpole"
    default_ttl_s: int = Field(default=3600, ge=1)
    leeway_s: int = Field(default=5, ge=0)


class IdGenSettings(BaseModel):
    """The Gift ID generator."""

    workshop_id: int = Field(default=0, ge=0, le=1023)
    epoch_ms: int = Field(default=DEFAULT_EPOCH_MS, ge=0)
    clock_tolerance_ms: int = Field(default=10, ge=0, le=10_000)
    reserve_ms: int = Field(default=1000, ge=10, le=60_000)
    collision_sample_every: int = Field(default=64, ge=1)


class TaskSettings(BaseModel):
    """The task queue."""

    partitions: int = Field(default=16, ge=1, le=4096)
    aging_ms: int = Field(default=1000, ge=1, le=3_600_000)
    lease_ms: int = Field(default=30_000, ge=100, le=3_600_000)
    worker_ttl_ms: int = Field(default=30_000, ge=100, le=3_600_000)
    sweep_interval_ms: int = Field(default=500, ge=10, le=60_000)
    retry_base_ms: int = Field(default=1_000, ge=0)
    retry_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    retry_max_ms: int = Field(default=300_000, ge=0)
    target_drain_s: float = Field(default=60.0, gt=0)
    max_claim_wait_s: float = Field(default=30.0, ge=0, le=300)
    #: Cluster edition: the Redis store (``redis://``, ``redis+cluster://``,
    #: ``redis+sentinel://host:port/<service>``); unset: SQLite in the data directory.
    redis_url: str | None = None
    #: Replicas that must acknowledge every write (``WAIT``); 0: do not wait.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=1_000, ge=1, le=60_000)


class BusSettings(BaseModel):
    """The event stream.

    Attributes:
        nats_url: NATS server URL(s), comma-separated (cluster edition: JetStream);
            unset: an in-process stream (embedded edition).
        stream_replicas: Copies of the stream in a NATS cluster.
        duplicate_window_s: How long the stream remembers message ids.
        compress_min_bytes: Payloads at least this large travel zstd-compressed.
    """

    nats_url: str | None = None
    stream_replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0, le=86_400)
    compress_min_bytes: int = Field(default=1_024, ge=1)


class LifecycleTaskTypes(BaseModel):
    """The task types whose events move a gift along its lifecycle.

    Attributes:
        build: Starting one puts the gift IN_PRODUCTION.
        wrap: Completing one makes it WRAPPED.
        load: Completing one makes it LOADED.
        deliver: Completing one makes it DELIVERED.
    """

    build: str = Field(default="build", min_length=1, max_length=100)
    wrap: str = Field(default="wrap", min_length=1, max_length=100)
    load: str = Field(default="load", min_length=1, max_length=100)
    deliver: str = Field(default="deliver", min_length=1, max_length=100)


class RegistrySettings(BaseModel):
    """The gift registry.

    Attributes:
        database_url: ``postgresql://user:pass@host:port/db`` (cluster edition);
            ``None`` keeps gifts in ``<data_dir>/registry.db`` (SQLite).
        pool_size: PostgreSQL connections kept open per process.
        retention_months: Monthly partitions whose whole month ended more than this
            many months before the current one are detached and archived.
        partitions_ahead: Monthly partitions kept created ahead of the current month.
        archive_dir: Where archived partitions go; ``None``: ``<data_dir>/archive``.
        upkeep_interval_s: How often partitions are created ahead and old ones archived.
        cache_size: Gifts kept in the in-process LRU cache (0 turns it off).
        cache_ttl_s: Longest a cached gift is served (bounds staleness when other
            processes change gifts).
        max_batch: Most gifts one create request may carry.
        outbox_batch: Most outbox rows relayed per publish.
        follow_batch: Most task events turned into status changes per transaction.
        busy_timeout_ms: How long the SQLite store waits for another process's lock.
        task_types: The task types of the lifecycle.
    """

    database_url: str | None = None
    pool_size: int = Field(default=8, ge=1, le=200)
    retention_months: int = Field(default=12, ge=1, le=1200)
    partitions_ahead: int = Field(default=3, ge=1, le=120)
    archive_dir: Path | None = None
    upkeep_interval_s: float = Field(default=3_600.0, gt=0)
    cache_size: int = Field(default=100_000, ge=0)
    cache_ttl_s: float = Field(default=5.0, gt=0)
    max_batch: int = Field(default=10_000, ge=1, le=100_000)
    outbox_batch: int = Field(default=1_000, ge=1, le=100_000)
    follow_batch: int = Field(default=1_000, ge=1, le=100_000)
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    task_types: LifecycleTaskTypes = LifecycleTaskTypes()


class HttpSettings(BaseModel):
    """The HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=8_388_608, ge=1024)
    #: Responses at least this large are gzipped for clients that accept gzip.
    gzip_min_bytes: int = Field(default=1_024, ge=0)
    #: zlib level of those answers: 1 (the default, as nginx's) compresses a 1,000-task
    #: answer 40x in 0.5 ms; 9 gets 59x but takes 3.8 ms, a fifth of the server's time
    #: on batch submits.
    gzip_level: int = Field(default=1, ge=1, le=9)
    shutdown_timeout_s: float = Field(default=10.0, ge=0)


class Settings(BaseSettings):
    """Every setting of a northpole process."""

    model_config = SettingsConfigDict(
        env_prefix="NORTHPOLE_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Path(".northpole")
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.JSON
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    idgen: IdGenSettings = IdGenSettings()
    tasks: TaskSettings = TaskSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    matcher: ReplicaSettings = ReplicaSettings()
    registry: RegistrySettings = RegistrySettings()
    bus: BusSettings = BusSettings()
    coord: CoordSettings = CoordSettings()

    def ensure_data_dir(self) -> Path:
        """Create the data directory (mode 0700) if missing and return it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.data_dir
