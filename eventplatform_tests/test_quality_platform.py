"""The quality checks as Dagster runs them: one job, real instance, alerts with run links."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dagster import DagsterInstance, build_schedule_context

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import make_admin, make_producer
from eventplatform.kafka.dlq import DeadLetter, send_dead_letter
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event, land_rows
from eventplatform_tests.test_quality import webhook  # noqa: F401 - fixture


def test_quality_job_runs_every_check_and_alerts_on_failures(
    platform_env: Settings,
    monkeypatch,
    webhook,  # noqa: F811
) -> None:
    url, received = webhook
    monkeypatch.setenv("EP_QUALITY_ALERT_WEBHOOK_URL", url)
    monkeypatch.setenv("EP_QUALITY_ALERT_WEBHOOK_FORMAT", "json")
    settings = Settings()  # with the webhook; handed to the definitions as their resources
    ensure_topics(make_admin(settings.kafka.bootstrap), platform_topics(settings.kafka))

    now = datetime.now(UTC)
    clickhouse = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
    clickhouse.apply_ddl(settings.paths.sql_dir / "clickhouse")
    fraud = [
        decoded_event(
            "ad_click",
            "adnet",
            now - timedelta(minutes=2),
            event_id=f"c{i}",
            ip="203.0.113.66",
            user_id=f"v{i}",
        )
        for i in range(300)
    ]
    land_rows(clickhouse, fraud, "b1", landed=now)
    producer = make_producer(settings.kafka.bootstrap)
    for _ in range(5):
        send_dead_letter(
            producer,
            settings.kafka.dlq_topic,
            DeadLetter(
                "validation",
                "payload.colour: unknown field for eventplatform.Click",
                "collect",
                b"{}",
                customer_id="adnet",
            ),
        )
    producer.produce(settings.kafka.raw_topic, key=b"adnet", value=b"accepted")
    producer.flush(30)

    from eventplatform.definitions import build_defs

    defs = build_defs(settings)
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("quality_checks").execute_in_process(instance=instance)
        run_id = result.run_id
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        schedule = defs.resolve_schedule_def("quality_checks_schedule")
        requests = schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests
        assert len(requests) == 1 and requests[0].job_name in (None, "quality_checks")

    assert set(evaluations) == {
        "freshness",
        "volume_anomaly",
        "duplicate_rate",
        "click_fraud",
        "foreign_campaign",
        "hot_keys",
        "bot_share",
        "dlq_rate",
        "schema_drift",
        "consumer_lag_check",
    }
    failed = {name for name, e in evaluations.items() if not e.passed}
    # Planted: a click burst from one IP, and 5 dead letters against 1 accepted event with an
    # unknown field (schema drift). One customer has all traffic, but 300 events are under
    # the hot-key minimum volume, so hot_keys passes. The clicks name campaign cmp-42, which is
    # not loaded: their cost is spent against no budget (foreign_campaign warns).
    assert failed == {"click_fraud", "dlq_rate", "schema_drift", "foreign_campaign"}
    assert evaluations["foreign_campaign"].severity.value == "WARN"
    assert "adnet: 300 cost events" in evaluations["foreign_campaign"].metadata["evidence"].value
    assert evaluations["click_fraud"].metadata["offenders"].value == 1
    assert "203.0.113.66" in evaluations["click_fraud"].metadata["evidence"].value

    alerts = {a["check"]: a for a in received}
    assert set(alerts) == failed
    assert alerts["click_fraud"]["run_url"] == f"http://127.0.0.1:3000/runs/{run_id}"
    assert alerts["dlq_rate"]["asset"] == "kafka_topics"
    log_lines = [json.loads(line) for line in settings.alert_log_file.read_text().splitlines()]
    assert {a["check"] for a in log_lines} == failed
