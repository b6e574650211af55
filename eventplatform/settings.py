"""All settings in one place: typed, with defaults that work on a laptop, overridable by env.

Every field can be set by an environment variable named ``EP_<SECTION>_<FIELD>`` (for example
``EP_KAFKA_PORT=9192``). A few well-known variables are honoured as well:
``KAFKA_BOOTSTRAP_SERVERS`` (use an existing cluster, start no broker), ``KAFKA_HOME`` (use an
existing Kafka installation's jars) and ``DAGSTER_HOME``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventplatform.events.policy import (
    DEFAULT_MAX_AGE_DAYS,
    DEFAULT_MAX_EVENT_COST,
    DEFAULT_MAX_FUTURE_S,
    EventPolicy,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "4.4.0"  # newest 4.x on Maven Central when pinned; see eventplatform/kafka/pom.xml


def _default_data_dir() -> Path:
    return (Path.cwd() / ".data").resolve()


class PathSettings(BaseSettings):
    """Where the platform keeps its state on this machine."""

    model_config = SettingsConfigDict(env_prefix="EP_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    cache_dir: Path = Field(default=REPO_ROOT / ".cache")
    sql_dir: Path = Field(default=REPO_ROOT / "sql")


class KafkaSettings(BaseSettings):
    """The broker (local or external) and the platform's topics."""

    model_config = SettingsConfigDict(env_prefix="EP_KAFKA_", extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "EP_KAFKA_BOOTSTRAP_SERVERS"),
        description="An existing cluster. When set, the platform starts no broker of its own.",
    )
    kafka_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_HOME", "EP_KAFKA_HOME"),
        description="An existing Kafka installation whose libs/ are used instead of Maven's.",
    )
    version: str = KAFKA_VERSION
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    start_timeout_s: float = 60.0

    raw_topic: str = "events.raw"
    overflow_topic: str = "events.overflow"
    dlq_topic: str = "events.dlq"
    control_topic: str = "campaign.control"
    raw_partitions: int = 12
    overflow_partitions: int = 3
    dlq_partitions: int = 3
    control_partitions: int = 3
    replication_factor: int = 1
    min_insync_replicas: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    dlq_retention_ms: int = 30 * 24 * 3600 * 1000

    @property
    def is_external(self) -> bool:
        return bool(self.bootstrap_servers)

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class ClickHouseSettings(BaseSettings):
    """ClickHouse: the embedded chdb engine by default, any server with an http(s) DSN."""

    model_config = SettingsConfigDict(env_prefix="EP_CLICKHOUSE_", extra="ignore")

    dsn: str | None = Field(
        default=None, description="Default: chdb:///<data_dir>/clickhouse (embedded engine)."
    )
    database: str = "eventplatform"
    # The embedded engine allocates with its own jemalloc, which ClickHouse builds to keep
    # freed pages for 5 s: 60-100 MiB of the landing process's peak (README, Landing figures).
    engine_malloc_conf: str = Field(
        default="dirty_decay_ms:1000",
        description="jemalloc options for the embedded engine (JE_MALLOC_CONF), applied when "
        "chdb is first loaded; empty leaves them alone.",
    )


class DagsterSettings(BaseSettings):
    """Dagster's instance: where it lives, what stores its runs and event logs, its UI."""

    model_config = SettingsConfigDict(env_prefix="EP_DAGSTER_", extra="ignore")

    home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DAGSTER_HOME", "EP_DAGSTER_HOME"),
        description="Default: <data_dir>/dagster.",
    )
    host: str = "127.0.0.1"
    port: int = 3000
    storage: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="What stores runs, event logs and schedules: SQLite files in DAGSTER_HOME, "
        "or PostgreSQL (the local server the platform starts, or EP_DAGSTER_POSTGRES_URL).",
    )
    postgres_url: SecretStr | None = Field(
        default=None,
        description="An existing PostgreSQL server "
        "(postgresql+psycopg2://user:password@host:port/db). "
        "When set, the platform starts no server of its own; the URL stays in the environment, "
        "never in the generated dagster.yaml (and `eventplatform settings` masks it).",
    )
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=5433, description="Not 5432: a system cluster may be there.")
    postgres_user: str = "dagster"
    postgres_db: str = "dagster"
    postgres_os_user: str = Field(
        default="postgres",
        description="The unprivileged system user the local server runs as when we are root.",
    )
    postgres_data_dir: Path | None = Field(
        default=None, description="The local server's folder. Default: <data_dir>/postgres."
    )
    postgres_bin_dir: Path | None = Field(
        default=None,
        description="Where initdb and pg_ctl are. Default: PATH, then /usr/lib/postgresql/*/bin.",
    )
    postgres_start_timeout_s: float = 60.0

    @property
    def uses_postgres(self) -> bool:
        return self.storage == "postgres"

    @property
    def postgres_is_external(self) -> bool:
        return bool(self.postgres_url)


class CollectorSettings(BaseSettings):
    """The HTTP collector: where it listens, what it accepts, how fast each customer may send."""

    model_config = SettingsConfigDict(env_prefix="EP_COLLECTOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 5 * 1024 * 1024  # as sent (compressed or not)
    max_decompressed_bytes: int = 20 * 1024 * 1024  # a gzip bomb stops here
    max_events_per_request: int = 10_000
    rate_per_s: float = Field(default=2000.0, description="Per customer, per worker process.")
    burst: float = 10_000.0
    hard_cap_per_s: float = Field(
        default=20_000.0, description="Above this a customer gets 429 (per worker process)."
    )
    hard_cap_burst: float = 50_000.0
    producer_max_messages: int = 200_000
    producer_max_mib: int = Field(
        default=1024,
        description="Event bytes the collector may hold for the broker (with the message "
        "limit above: beyond either, a request is answered 503 and nothing of it is kept).",
    )
    producer_linger_ms: int = Field(
        default=20,
        description="How long the producer gathers a batch: fewer, larger produce requests "
        "cost the collector and the broker less CPU; answers do not wait for it (but "
        "?sync=true does).",
    )
    sync_timeout_s: float = 30.0
    delivery_timeout_s: float = Field(
        default=0.0,
        description="librdkafka's delivery timeout (message.timeout.ms). 0: none, an accepted "
        "event waits in the buffer until the broker takes it (and a full buffer answers 503). "
        "Any other value only makes the producer give up sooner: a message that timed out is "
        "produced again, never dropped.",
    )
    shutdown_flush_s: float = Field(
        default=20.0,
        description="On SIGTERM, how long to wait for the broker to take what was accepted; "
        "what it has not taken by then is written to the journal (EP_COLLECTOR_JOURNAL_DIR) "
        "and delivered at the next start.",
    )
    journal_dir: Path | None = Field(
        default=None,
        description="Accepted events the broker did not take (at shutdown, or refused for "
        "good, under failed/). Default: <data_dir>/collector-journal.",
    )
    retry_after_s: int = 2
    native_intake: bool = Field(
        default=True,
        description="Validate and encode the usual body's good events in native code (one "
        "pass, JSON to Avro); every other event, and every error, is the Python validator's. "
        "false: every event takes the Python path (the reference).",
    )
    key_cache_s: float = Field(default=5.0, description="How soon a revoked key stops working.")
    access_log: bool = False
    # Tenant isolation at intake (issue 13): what one customer can take of the collector.
    admin_host: str = Field(
        default="127.0.0.1",
        description="The admin listener (/metrics, /readyz, /openapi.json): loopback unless "
        "a scraper elsewhere needs it (it has no auth).",
    )
    admin_port: int = 8081
    heavy_concurrency: int = Field(
        default=2,
        description="Large or gzip bodies inflated and parsed at once, in worker threads, "
        "all customers together (a small uncompressed batch is taken on the event loop).",
    )
    heavy_per_customer: int = Field(
        default=1, description="Of those, how many one customer may have at once."
    )
    heavy_queue_per_customer: int = Field(
        default=16,
        description="Large or gzip requests of one customer waiting for its turn; beyond "
        "that 429 at once (a waiting request holds no body yet).",
    )
    heavy_wait_s: float = Field(
        default=10.0, description="The longest a large request waits for its turn: then 503."
    )
    max_event_bytes: int = Field(
        default=900_000,
        description="An event larger than this (as sent, or encoded) is rejected to the DLQ: "
        "librdkafka refuses messages over 1,000,000 bytes.",
    )
    dlq_max_value_bytes: int = Field(
        default=65_536,
        description="A dead letter keeps at most this many bytes of the original; its full "
        "length and SHA-256 are in headers (original_length, original_sha256).",
    )
    sync_max_per_customer: int = Field(
        default=8,
        description="?sync=true requests of one customer waiting for the broker at once; "
        "beyond that 429 before anything is read.",
    )
    auth_negative_cache_size: int = Field(
        default=10_000,
        description="Unknown keys remembered (for EP_COLLECTOR_KEY_CACHE_S) so that a flood "
        "of them costs no SQLite lookups; the oldest is forgotten first.",
    )
    auth_max_pending_lookups: int = Field(
        default=256,
        description="Key lookups (SQLite, off the event loop) waiting at once; beyond that an "
        "unknown key gets 503 without one.",
    )


class EventSettings(BaseSettings):
    """Which well-formed events are accepted: the event_ts window (checked by the collector
    and again by the lander, relative to each event's received_ts)."""

    model_config = SettingsConfigDict(env_prefix="EP_EVENTS_", extra="ignore")

    max_age_days: float = Field(
        default=DEFAULT_MAX_AGE_DAYS,
        description="event_ts at most this many days before received_ts (history replays).",
    )
    max_future_s: float = Field(
        default=DEFAULT_MAX_FUTURE_S,
        description="event_ts at most this many seconds after received_ts (clock skew).",
    )


class BudgetSettings(BaseSettings):
    """Campaign budgets: tolerances for the checks that guard them."""

    model_config = SettingsConfigDict(env_prefix="EP_BUDGETS_", extra="ignore")

    overspend_tolerance_pct: float = Field(
        default=1.0, description="Spend above budget by more than this % fails the check."
    )
    pacing_warn_pct: float = Field(
        default=150.0, description="Today's pacing above this % (of an even spread) warns."
    )
    signal_reread_s: float = 30.0
    max_event_cost: float = Field(
        default=DEFAULT_MAX_EVENT_COST,
        description="One event's cost at most this (and at least 0); others are dead-lettered.",
    )


class LandSettings(BaseSettings):
    """Landing: how topics are split into shards, and how big a micro-batch may grow."""

    model_config = SettingsConfigDict(env_prefix="EP_LAND_", extra="ignore")

    group_id: str = Field(
        default="eventplatform-land", description="The consumer group whose offsets land."
    )
    raw_shards: int = Field(default=2, description="Shards of events.raw: partition % shards.")
    overflow_shards: int = 1
    dlq_shards: int = 1
    batch_max_records: int = Field(
        default=50_000,
        description="A batch closes at this many messages (a backlog's batches). 50,000 "
        "landed faster than 100,000 or 25,000 on the 2-core bench machine, in less memory "
        "than 100,000 (bench/README.md).",
    )
    batch_max_bytes: int = 32 * 1024 * 1024
    batch_max_wait_s: float = Field(
        default=1.0,
        description="A batch is closed at the latest this long after its first message.",
    )
    batch_linger_s: float = Field(
        default=0.2,
        description="A caught-up shard's batch closes this long after its first message (a "
        "backlog's batches grow to the max_records / max_bytes limits instead).",
    )
    idle_stop_s: float = Field(
        default=60.0, description="A landing run ends after this long without messages."
    )
    max_run_s: float = Field(
        default=3600.0, description="A landing run ends after this long; the sensor starts another."
    )
    max_opens_embedded: int = Field(
        default=200,
        description="With the embedded engine a landing run ends after opening it this many "
        "times, and the sensor starts another: chdb 4.4 keeps threads and memory behind each "
        "time the engine is opened, and only the process's end gives them back. A run keeps "
        "the engine open across its batches and reopens it only after handing it to another "
        "process that waits (a second shard, a Dagster run, the CLI). 0: no limit. A server "
        "DSN has none.",
    )
    consumer_queue_kbytes: int = Field(
        default=16 * 1024,
        description="librdkafka's prefetch queue bound (memory). 16 MiB: a landing process "
        "peaked about 95 MiB lower than with 32 MiB (the next batch is collected while one is "
        "written, so a deep prefetch buys nothing; bench/README.md).",
    )
    sensor_interval_s: int = 10
    commit_timeout_s: float = Field(
        default=300.0, description="How long a commit waits out a broker that is down."
    )
    commit_attempt_timeout_s: float = Field(
        default=30.0,
        description="How long one try of a commit may go unanswered before the next try goes "
        "through a new client of the group (a client can lose the group's coordinator for good "
        "across a broker restart; eventplatform/land/commit.py).",
    )
    shard_lock_wait_s: float = Field(
        default=30.0,
        description="How long a landing run waits for another lander of its shard to finish "
        "before it fails (one lander per shard: two would land events twice).",
    )
    report_every_s: float = Field(
        default=5.0,
        description="A landing run records its batches as one materialization per asset this "
        "often (with every batch's offsets), not one per sub-second batch: the event log "
        "grows by the interval, not by the batch rate. The budget controller's observation of "
        "campaign_budgets is as often, or at once when it sends signals. 0: one per batch.",
    )
    compact_interval_s: int = Field(
        default=300, description="How often the lake_compaction sensor starts a compaction run."
    )
    compact_target_bytes: int = Field(
        default=128 * 1024 * 1024, description="Compaction writes lake files up to this size."
    )
    compact_grace_s: float = Field(
        default=300.0,
        description="An hour's folder is closed, and its files all compacted, this long after "
        "the hour ends (late-event folders: files this old).",
    )
    compact_open_min_files: int = Field(
        default=64,
        description="In an hour still open, compaction merges only runs of at least this many "
        "files (each row is rewritten a few times at most).",
    )
    compact_delete_after_s: float = Field(
        default=900.0,
        description="A file a compacted one supersedes is deleted this long after: a reader "
        "that listed the folder before the compaction can still read it.",
    )
    compact_max_input_files: int = Field(
        default=20_000,
        description="Files one compaction pass merges at most (hourly folders first, then "
        "late-event and dead-letter folders): one customer's history replay waits its turn.",
    )
    clickhouse_partitions_per_insert: int = Field(
        default=100,
        description="A batch spanning more months than this is inserted in several parts "
        "(ClickHouse refuses an insert into more partitions than its limit).",
    )


class QualitySettings(BaseSettings):
    """Thresholds of the quality checks, and where their alerts go.

    ``EP_QUALITY_OVERRIDES`` takes per-customer thresholds as JSON, for example
    ``{"big-customer": {"hot_customer_share": 0.9}, "tiny": {"freshness_minutes": 240}}``.
    """

    model_config = SettingsConfigDict(env_prefix="EP_QUALITY_", extra="ignore")

    window_minutes: int = 60
    freshness_minutes: float = 15.0
    freshness_lookback_hours: int = 24
    # a customer's limit is at least the time in which it usually sends this many events
    freshness_min_expected: float = 20.0
    volume_baseline_days: int = 7
    volume_min_history_days: int = 3
    volume_spike_factor: float = 3.0
    volume_drop_factor: float = 3.0
    volume_min_baseline: float = 100.0
    dlq_rate_max: float = 0.05
    dlq_customer_min_events: int = 20  # dead letters before a customer's own rate counts
    duplicate_rate_max: float = 0.01
    schema_drift_min_events: int = 5  # of one rejection (reason and detail) in the window
    ctr_max: float = 0.10
    ctr_min_impressions: int = 1000
    clicks_per_source_max: int = 200
    hot_customer_share: float = 0.6
    hot_record_share: float = 0.2
    hot_record_fair_factor: float = 2.0  # a key above this x its fair share (1/keys)
    hot_customer_growth: float = 1.5  # a customer above this x its usual share
    hot_min_events: int = 1000
    bot_share_max: float = Field(
        default=0.3, description="A customer's share of events flagged is_bot above this warns."
    )
    bot_min_events: int = 500  # events in the window before a customer's bot share counts
    lag_max_messages: int = 100_000
    lag_growing_minutes: float = 15.0
    overrides: dict[str, dict[str, float]] = Field(default_factory=dict)

    alert_webhook_url: str | None = None
    alert_webhook_format: str = Field(default="json", description="json or slack")
    alert_log_file: Path | None = Field(default=None, description="Default: <data_dir>/alerts.log")
    alert_cooldown_minutes: float = 60.0
    dagster_url: str = "http://127.0.0.1:3000"

    def for_customer(self, customer_id: str, name: str) -> float:
        return self.overrides.get(customer_id, {}).get(name, getattr(self, name))


class EnrichSettings(BaseSettings):
    """Enrichment in the landing batch (docs/enrichment.md)."""

    model_config = SettingsConfigDict(env_prefix="EP_ENRICH_", extra="ignore")

    enabled: bool = Field(
        default=True,
        description="false: only the IP anonymisation runs (raw IPs never land unless a "
        "customer says keep); the other enriched columns are null. For measurements.",
    )
    reporting_currency: str = Field(
        default="USD", description="amount, cost and revenue are also given in this currency."
    )
    rates_dir: Path | None = Field(
        default=None, description="Loaded exchange-rate tables. Default: <data_dir>/reference/fx"
    )
    change_delay_s: float = Field(
        default=60.0,
        description="A customer's setting or a rates load applies to events received this "
        "long after it is made, so a replayed batch gives the same rows.",
    )
    ua_cache_size: int = Field(
        default=100_000, description="Distinct user agents a landing run remembers parsed."
    )
    ua_parse_budget: int = Field(
        default=20_000,
        description="Distinct user agents parsed per batch at most (the most frequent first); "
        "the rest of a flood of distinct strings get nulls, counted.",
    )


class MartSettings(BaseSettings):
    """The analytic marts: where they are stored, how they are built and rebuilt."""

    model_config = SettingsConfigDict(env_prefix="EP_MARTS_", extra="ignore")

    warehouse_path: Path | None = Field(
        default=None, description="The DuckDB warehouse file. Default: <data_dir>/warehouse.duckdb."
    )
    start_date: str = Field(
        default="2026-01-01", description="First daily partition (UTC, YYYY-MM-DD)."
    )
    late_arrival_days: int = Field(
        default=3,
        description="Days back (before today, UTC) in which late events cause a rebuild.",
    )
    funnel_steps: str = Field(
        default="page_view,click,signup,purchase",
        description="The product funnel: event types in order, comma separated.",
    )
    retention_weeks: int = Field(
        default=8,
        ge=1,
        le=8,
        description="Lookback of the weekly retention cohorts, in weeks (at most 8: the "
        "users' activity state keeps 63 days).",
    )
    mirror_clickhouse: bool = Field(
        default=True, description="Mirror each built partition to ClickHouse tables."
    )
    native_sessions: bool = Field(
        default=True,
        description="Build sessions_daily with the native grouping (eventplatform/marts/"
        "native.py: the same rows as its SQL, in a fraction of the CPU); false: by its SQL.",
    )
    native_sessions_max_rows: int = Field(
        default=20_000_000,
        ge=0,
        description="A day with more landed rows builds sessions_daily by its SQL: the native "
        "grouping holds the day's columns in memory (about 200 bytes a row at 10 M rows), "
        "while DuckDB spills past duckdb_memory_limit.",
    )
    daily_cron: str = Field(
        default="30 0 * * *", description="When yesterday's partition is built (UTC)."
    )
    intraday_cron: str = Field(
        default="*/15 * * * *",
        description="Today's partition is rebuilt after each tick (UTC) once events landed since.",
    )
    sensor_interval_s: int = Field(default=120, description="How often late data is looked for.")
    duckdb_memory_limit: str = "4GB"
    lock_timeout_s: float = Field(
        default=120.0, description="How long a build waits for the warehouse file's lock."
    )
    include_bots: bool = Field(
        default=False,
        description="Marts count events flagged is_bot (enrichment) too; by default they do not.",
    )

    @property
    def funnel(self) -> list[str]:
        steps = [s.strip() for s in self.funnel_steps.split(",") if s.strip()]
        if not steps:
            raise ValueError("EP_MARTS_FUNNEL_STEPS names no event type")
        return steps


class Settings:
    """The composed settings. Build with :func:`get_settings` (cached) or directly in tests."""

    def __init__(self) -> None:
        self.paths = PathSettings()
        self.kafka = KafkaSettings()
        self.clickhouse = ClickHouseSettings()
        self.dagster = DagsterSettings()
        self.events = EventSettings()
        self.collector = CollectorSettings()
        self.budgets = BudgetSettings()
        self.land = LandSettings()
        self.quality = QualitySettings()
        self.marts = MartSettings()
        self.enrich = EnrichSettings()

    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir

    @property
    def event_policy(self) -> EventPolicy:
        return EventPolicy(
            max_age_days=self.events.max_age_days,
            max_future_s=self.events.max_future_s,
            max_event_cost=self.budgets.max_event_cost,
        )

    @property
    def kafka_data_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def dagster_home(self) -> Path:
        return (self.dagster.home or self.data_dir / "dagster").resolve()

    @property
    def postgres_data_dir(self) -> Path:
        return (self.dagster.postgres_data_dir or self.data_dir / "postgres").resolve()

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def collector_journal_dir(self) -> Path:
        return self.collector.journal_dir or self.data_dir / "collector-journal"

    @property
    def customers_db(self) -> Path:
        return self.data_dir / "customers.sqlite"

    @property
    def rates_dir(self) -> Path:
        return self.enrich.rates_dir or self.data_dir / "reference" / "fx"

    @property
    def alert_log_file(self) -> Path:
        return self.quality.alert_log_file or self.data_dir / "alerts.log"

    @property
    def warehouse_path(self) -> Path:
        return self.marts.warehouse_path or self.data_dir / "warehouse.duckdb"

    @property
    def kafka_libs_dir(self) -> Path:
        if self.kafka.kafka_home:
            return self.kafka.kafka_home / "libs"
        return self.paths.cache_dir / f"kafka-{self.kafka.version}" / "libs"

    def describe(self) -> dict[str, object]:
        """The effective settings, for `eventplatform settings` and the README, with secrets
        masked (:func:`mask_secret`): the output is pasted into tickets and chat."""
        out: dict[str, object] = {}
        for section in (
            "paths",
            "kafka",
            "clickhouse",
            "dagster",
            "events",
            "collector",
            "budgets",
            "land",
            "quality",
            "marts",
            "enrich",
        ):
            for key, value in getattr(self, section).model_dump().items():
                out[f"{section}.{key}"] = str(value) if isinstance(value, Path) else value
        out["derived.kafka_bootstrap"] = self.kafka.bootstrap
        out["derived.clickhouse_dsn"] = self.clickhouse_dsn
        out["derived.lake_dir"] = str(self.lake_dir)
        out["derived.warehouse_path"] = str(self.warehouse_path)
        out["derived.dagster_home"] = str(self.dagster_home)
        out["derived.kafka_libs_dir"] = str(self.kafka_libs_dir)
        out["derived.collector_journal_dir"] = str(self.collector_journal_dir)
        return {key: mask_secret(key, value) for key, value in out.items()}


MASK = "***"
# A setting named like one of these is a secret whatever its value looks like.
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential|webhook_url|api_?key)")
# In a URL: the password of user:password@, and query values of secret-looking parameters.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^/?#\s]*(?=@)")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<head>[?&][^=&#\s]*(password|passwd|secret|token|key|sig|signature|auth)"
    r"[^=&#\s]*=)[^&#\s]*"
)


def mask_secret(name: str, value: object) -> object:
    """``value`` as it may be shown: a secret-named setting's whole value (a webhook URL is a
    credential: whoever has it can post), else passwords in URLs (DSNs) and secret-looking
    query parameters, masked. A masked setting still shows whether it is set."""
    if value is None or value == "":
        return value
    if _SECRET_NAME.search(name.rsplit(".", 1)[-1]):
        if isinstance(value, str) and "://" in value:
            return value.split("://", 1)[0] + "://" + MASK  # the scheme helps, the rest is secret
        return MASK
    if isinstance(value, str) and ("://" in value or "?" in value):
        value = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, value)
        return _SECRET_PARAM.sub(lambda m: m.group("head") + MASK, value)
    if isinstance(value, dict):
        return {k: mask_secret(str(k), v) for k, v in value.items()}
    return value


# The environment variables the settings read (every field's EP_* name and the well-known ones).
_SETTINGS_ENV = ("EP_", "DAGSTER_HOME", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_HOME")


def get_settings() -> Settings:
    """The settings of the current environment, for composition roots (the CLI, the code
    location's load). Built once per distinct environment: a process that changes an EP_*
    variable (a test, a CLI flag) gets settings that say so, with no cache to clear."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_SETTINGS_ENV)))
    return _settings_for(env)


@functools.lru_cache(maxsize=16)
def _settings_for(env: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()
