"""Typed resources, built from the typed settings (eventplatform/settings.py).

``platform_resources(settings)`` is the one place they are made: ``eventplatform/definitions.py``
binds them from the environment's settings when the code location loads; tests pass their own.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from confluent_kafka.admin import AdminClient
from pydantic import PrivateAttr

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import make_admin
from eventplatform.marts.inputs import LakeScanner
from eventplatform.settings import Settings


class ClickHouseResource(dg.ConfigurableResource):
    """The platform's ClickHouse (embedded chdb or a server), with its DDL applied once."""

    dsn: str
    database: str = "eventplatform"
    engine_malloc_conf: str = ""
    sql_dir: str

    _client: ClickHouse | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ClickHouseResource":
        return cls(
            dsn=settings.clickhouse_dsn,
            database=settings.clickhouse.database,
            engine_malloc_conf=settings.clickhouse.engine_malloc_conf,
            sql_dir=str(settings.paths.sql_dir),
        )

    def get_client(self) -> ClickHouse:
        """One handle per resource instance; the DDL runs once per process and database (every
        run of a code location builds its resources anew, and the DDL is idempotent)."""
        if self._client is None:
            client = ClickHouse(self.dsn, self.database, self.engine_malloc_conf)
            applied = (self.dsn, self.database, self.sql_dir)
            if applied not in _DDL_APPLIED:
                client.apply_ddl(Path(self.sql_dir) / "clickhouse")
                _DDL_APPLIED.add(applied)
            self._client = client
        return self._client


_DDL_APPLIED: set[tuple[str, str, str]] = set()


class KafkaResource(dg.ConfigurableResource):
    """The broker and the platform's topic names (what the assets and checks read)."""

    bootstrap: str
    raw_topic: str
    overflow_topic: str
    dlq_topic: str
    control_topic: str
    landing_group: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "KafkaResource":
        k = settings.kafka
        return cls(
            bootstrap=k.bootstrap,
            raw_topic=k.raw_topic,
            overflow_topic=k.overflow_topic,
            dlq_topic=k.dlq_topic,
            control_topic=k.control_topic,
            landing_group=settings.land.group_id,
        )

    @property
    def event_topics(self) -> tuple[str, str]:
        """The topics that carry accepted events (the landing group reads both)."""
        return (self.raw_topic, self.overflow_topic)

    def admin(self) -> AdminClient:
        return make_admin(self.bootstrap)


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake's root folder (landed events and dead letters)."""

    lake_dir: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "LakeResource":
        return cls(lake_dir=str(settings.lake_dir))

    def scanner(self) -> LakeScanner:
        return LakeScanner(Path(self.lake_dir))


def platform_resources(settings: Settings) -> dict[str, Any]:
    """Every resource the definitions use, from one Settings.

    ``settings`` itself is a resource too (a plain object, typed ``ResourceParam[Settings]``):
    the domain code (landers, mart builder, alert routing) takes the typed settings whole.
    """
    return {
        "settings": settings,
        "clickhouse": ClickHouseResource.from_settings(settings),
        "kafka": KafkaResource.from_settings(settings),
        "lake": LakeResource.from_settings(settings),
    }
