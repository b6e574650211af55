"""The consumer lag check with its memory: a sample per run, kept in ClickHouse.

Lag that is merely high and lag that keeps growing look alike in one reading, so each run of
the check appends the landing group's lag per topic to ``consumer_lag_samples``
(``sql/clickhouse/020_quality.sql``, a 30-day TTL) and judges the samples of the growth
window (``checks.consumer_lag_check``). Dashboards can plot the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.lag import consumer_lag
from eventplatform.quality import checks
from eventplatform.settings import QualitySettings

TABLE = "consumer_lag_samples"


def record_lag_sample(
    clickhouse: ClickHouse,
    group: str,
    lag_by_topic: Mapping[str, int],
    now: datetime,
    since: datetime,
) -> list[tuple[datetime, int]]:
    """Append this run's sample, and return the group's total lag per sample since ``since``
    (this one included), oldest first, as UTC datetimes."""
    table = f"{clickhouse.database}.{TABLE}"
    with clickhouse.session() as client:
        client.insert(
            table,
            [[now, t, group, n] for t, n in lag_by_topic.items()],
            column_names=["ts", "topic", "grp", "lag"],
        )
        history = client.query(
            f"SELECT ts, sum(lag) FROM {table} WHERE grp = %(g)s AND ts >= %(since)s "
            "GROUP BY ts ORDER BY ts",
            parameters={"g": group, "since": since.astimezone(UTC).replace(tzinfo=None)},
        ).result_rows
    return [(ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts, n) for ts, n in history]


def consumer_lag_outcome(
    clickhouse: ClickHouse,
    bootstrap: str,
    group: str,
    topics: Iterable[str],
    q: QualitySettings,
    now: datetime,
) -> checks.CheckOutcome:
    """Read the group's lag on ``topics`` from Kafka, record it, and judge it with its
    history: above ``lag_max_messages``, or growing at every sample of the window."""
    lag = {t: sum(consumer_lag(bootstrap, group, t).values()) for t in topics}
    since = now - timedelta(minutes=q.lag_growing_minutes)
    samples = record_lag_sample(clickhouse, group, lag, now, since)
    return checks.consumer_lag_check(lag, samples, q, now)
