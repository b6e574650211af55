"""Quality checks on constructed data whose anomalies are known, and alert routing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.dlq import DeadLetter, send_dead_letter
from eventplatform.kafka.lag import consumer_lag
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.quality import checks
from eventplatform.quality.alerts import AlertRouter, LogFileSink, WebhookSink
from eventplatform.quality.kafka_stats import dead_letters_since, messages_since
from eventplatform.quality.lag_samples import consumer_lag_outcome, record_lag_sample
from eventplatform.settings import QualitySettings
from eventplatform_tests.helpers import decoded_event, land_rows

NOW = datetime(2026, 11, 23, 15, 20, tzinfo=UTC)


@pytest.fixture
def ch(tmp_path: Path, clickhouse_with_ddl) -> Iterator[ClickHouse]:
    """The embedded engine with the DDL, kept open for the test (a lease, as the labelled run
    keeps it): the checks' queries are the same, without an open per query (60-150 ms)."""
    clickhouse = clickhouse_with_ddl(tmp_path / "ch", "ep_quality")
    with clickhouse.lease():
        yield clickhouse


def views(customer: str, n: int, received: datetime, tag: str = "", **kw) -> list[dict]:
    return [
        decoded_event("page_view", customer, received, event_id=f"{customer}-{tag}-{i}", **kw)
        for i in range(n)
    ]


def test_freshness_names_stale_customers_and_honours_overrides(ch) -> None:
    land_rows(
        ch, views("fresh", 3, NOW - timedelta(minutes=2)), "a", landed=NOW - timedelta(minutes=1)
    )
    land_rows(
        ch, views("stale", 3, NOW - timedelta(minutes=40)), "b", landed=NOW - timedelta(minutes=30)
    )
    outcome = checks.freshness(ch, QualitySettings(), NOW)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.summary == "1 of 2 customers stale"
    assert outcome.evidence == [
        "stale: newest landed event 30.0 min old (limit 15 min; last received 14:40:00 UTC)"
    ]
    relaxed = QualitySettings(overrides={"stale": {"freshness_minutes": 60}})
    assert checks.freshness(ch, relaxed, NOW).passed


def test_volume_anomaly_against_the_median_of_previous_days(ch) -> None:
    hour = datetime(2026, 11, 23, 14, 10, tzinfo=UTC)  # the last complete hour at NOW
    for day in range(1, 8):
        at = hour - timedelta(days=day)
        land_rows(
            ch,
            views("spiky", 200, at, f"d{day}")
            + views("dropping", 200, at, f"d{day}")
            # one outlier day for "steady" does not move its median
            + views("steady", 5000 if day == 3 else 200, at, f"d{day}"),
            f"day-{day}",
        )
    land_rows(
        ch,
        views("spiky", 1000, hour, "now")
        + views("dropping", 20, hour, "now")
        + views("steady", 230, hour, "now"),
        "now",
    )
    outcome = checks.volume_anomaly(ch, QualitySettings(), NOW)
    assert not outcome.passed
    assert outcome.evidence == [
        "dropping: drop, 20 events at 2026-11-23 14h vs median 200 of the same hour on 7 "
        "previous days (< /3)",
        "spiky: spike, 1000 events at 2026-11-23 14h vs median 200 of the same hour on 7 "
        "previous days (> x3)",
    ]
    assert outcome.metadata["customers_with_baseline"] == 3


def test_volume_anomaly_needs_history(ch) -> None:
    land_rows(ch, views("new", 500, NOW - timedelta(hours=1)), "a")
    outcome = checks.volume_anomaly(ch, QualitySettings(), NOW)
    assert outcome.passed and outcome.metadata["customers_with_baseline"] == 0


def test_duplicate_rate(ch) -> None:
    events = views("dup", 100, NOW - timedelta(minutes=5))
    land_rows(ch, events, "first")
    land_rows(ch, events[:5], "sender-retry")  # the same event ids sent again
    land_rows(ch, views("clean", 100, NOW - timedelta(minutes=5)), "clean")
    outcome = checks.duplicate_rate(ch, QualitySettings(), NOW)
    assert outcome.evidence == ["dup: 5 duplicates of 105 (4.76%)"]
    assert outcome.metadata["duplicates"] == 5


def test_click_fraud_ctr_and_bursts(ch) -> None:
    at = NOW - timedelta(minutes=10)

    def ads(kind: str, n: int, site: str, tag: str, **kw) -> list[dict]:
        """Distinct viewers (only the bot shares an IP), so only the planted bursts show."""
        return [
            decoded_event(
                kind,
                "adnet",
                at,
                event_id=f"{tag}-{i}",
                payload={"site_id": site},
                user_id=f"viewer-{tag}-{i}",
                **kw,
            )
            for i in range(n)
        ]

    land_rows(
        ch,
        ads("impression", 1000, "honest", "hi")
        + ads("ad_click", 20, "honest", "hc")
        + ads("impression", 1000, "shady", "si")
        + ads("ad_click", 150, "shady", "sc")
        + ads("ad_click", 250, "honest", "bot", ip="203.0.113.66"),
        "x",
    )
    outcome = checks.click_fraud(ch, QualitySettings(), NOW)
    assert not outcome.passed
    assert (
        "adnet site shady campaign cmp-42: CTR 15.0% (150 clicks / 1000 impressions, "
        "limit 10%)" in outcome.evidence
    )
    assert "adnet: 250 ad clicks from ip 203.0.113.66 in 60 min (limit 200)" in outcome.evidence
    # honest: (20 + 250) / 1000 = 27% is flagged too: the bot's clicks land on that site.
    assert len(outcome.evidence) == 3


def test_hot_keys(ch) -> None:
    at = NOW - timedelta(minutes=5)
    land_rows(
        ch,
        views("whale", 1800, at, user_id="u-1")[:900]
        + views("whale", 900, at, "b")
        + views("minnow", 100, at),
        "x",
    )
    outcome = checks.hot_keys(ch, QualitySettings(), NOW)
    assert "customer whale: 95% of 1900 events (limit 60%)" in outcome.evidence
    assert not outcome.passed


def test_dead_letters_rate_reasons_and_schema_drift(ch, bootstrap: str, unique: str) -> None:
    raw, dlq = f"raw.{unique}", f"dlq.{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(raw, 2, 1, {}), TopicSpec(dlq, 2, 1, {})])
    since_ms = int(time.time() * 1000) - 1000
    producer = make_producer(bootstrap)
    for i in range(90):
        producer.produce(raw, key=b"c1", value=b"x%d" % i)
    for i in range(10):
        detail = "colour: unknown field" if i < 6 else "expected c301, got '7b22'"
        send_dead_letter(
            producer,
            dlq,
            DeadLetter(
                reason="validation" if i < 6 else "bad_marker",
                detail=detail,
                stage="collect",
                value=b"{}",
                customer_id="c1" if i % 2 else "c2",
            ),
        )
    assert producer.flush(30) == 0
    assert messages_since(bootstrap, raw, since_ms) == 90
    sample = dead_letters_since(bootstrap, dlq, since_ms)
    assert (sample.total, sample.read) == (10, 10)
    assert dict(sample.by_reason) == {"validation": 6, "bad_marker": 4}

    outcome = checks.dlq_rate(sample, 90, QualitySettings())
    assert not outcome.passed
    assert outcome.summary.startswith("dead-letter rate 10.00% (10 of 100) above 5.00%")
    assert checks.dlq_rate(sample, 90, QualitySettings(dlq_rate_max=0.2)).passed

    drift = checks.schema_drift(ch, sample, QualitySettings(), NOW)
    assert drift.evidence == ["6 x validation: colour: unknown field"]


def test_new_schema_version_is_drift(ch) -> None:
    old = views("c", 5, NOW - timedelta(days=1), "old")
    for event in old:
        event["schema_version"] = 1
    land_rows(ch, old, "old")
    land_rows(ch, views("c", 5, NOW - timedelta(minutes=3), "new"), "new")
    from collections import Counter

    from eventplatform.quality.kafka_stats import DeadLetterSample

    empty = DeadLetterSample(0, 0, Counter(), Counter(), Counter())
    outcome = checks.schema_drift(ch, empty, QualitySettings(), NOW)
    assert outcome.evidence == ["schema version 2 first seen 15:17 UTC (5 events)"]


def test_consumer_lag_from_committed_offsets(bootstrap: str, unique: str) -> None:
    topic, group = f"lag.{unique}", f"land-{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 1, 1, {})])
    producer = make_producer(bootstrap)
    for i in range(10):
        producer.produce(topic, value=b"%d" % i)
    producer.flush(30)
    assert consumer_lag(bootstrap, group, topic) == {0: 10}  # nothing committed yet
    consumer = make_consumer(bootstrap, group)
    consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    consumer.close()
    assert consumer_lag(bootstrap, group, topic) == {0: 6}
    q = QualitySettings(lag_max_messages=5)
    assert not checks.consumer_lag_check({topic: 6}, [], q, NOW).passed
    assert checks.consumer_lag_check({topic: 5}, [], q, NOW).passed


def test_consumer_lag_growing_for_the_window() -> None:
    q = QualitySettings(lag_growing_minutes=15)
    growing = [(NOW - timedelta(minutes=m), 1000 - m * 10) for m in (14, 10, 5, 0)]
    outcome = checks.consumer_lag_check({"t": 1000}, growing, q, NOW)
    assert outcome.evidence == ["total lag grew at every sample for 15 min: 860 -> 1000"]
    wobbling = [
        (NOW - timedelta(minutes=m), v) for m, v in ((14, 860), (10, 900), (5, 880), (0, 1000))
    ]
    assert checks.consumer_lag_check({"t": 1000}, wobbling, q, NOW).passed
    too_short = [(NOW - timedelta(minutes=m), 1000 - m) for m in (3, 2, 1, 0)]
    assert checks.consumer_lag_check({"t": 1000}, too_short, q, NOW).passed


def test_lag_samples_are_kept_per_group_and_judged_over_the_window(
    bootstrap: str, unique: str, ch
) -> None:
    """The lag check's memory (``quality/lag_samples.py``): each run reads the lag from Kafka,
    appends it to ClickHouse, and is judged with the samples of its group in the window."""
    topic, group = f"lag.{unique}", f"land-{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 1, 1, {})])
    producer = make_producer(bootstrap)
    q = QualitySettings(lag_growing_minutes=15)
    record_lag_sample(ch, group, {topic: 99_999}, NOW - timedelta(minutes=20), NOW)  # too old
    record_lag_sample(ch, "another-group", {topic: 1}, NOW - timedelta(minutes=12), NOW)
    for minutes_ago in (14, 10, 5, 0):
        for i in range(10):
            producer.produce(topic, value=b"%d" % i)
        producer.flush(30)
        at = NOW - timedelta(minutes=minutes_ago)
        outcome = consumer_lag_outcome(ch, bootstrap, group, [topic], q, at)
    assert not outcome.passed
    assert outcome.evidence == ["total lag grew at every sample for 15 min: 10 -> 40"]
    history = record_lag_sample(ch, group, {topic: 40}, NOW, NOW - timedelta(minutes=15))
    assert [n for _, n in history] == [10, 20, 30, 80]  # NOW's two samples sum: 40 + 40
    assert history[0][0] == NOW - timedelta(minutes=14)


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    # polled every 50 ms (0.5 s by default: what shutdown() waits for)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver.received
    server.shutdown()
    server.server_close()


def test_alerts_fire_once_per_cooldown_then_resolve(tmp_path: Path, webhook) -> None:
    url, received = webhook
    log_file = tmp_path / "alerts.log"
    router = AlertRouter(
        [WebhookSink(url), LogFileSink(log_file)],
        tmp_path / "state.json",
        cooldown=timedelta(minutes=30),
    )
    failing = checks.CheckOutcome(
        "freshness",
        False,
        "ERROR",
        "1 of 2 customers stale",
        ["stale: newest landed event 30.0 min old"],
        {"offenders": 1},
    )
    run_url = "http://127.0.0.1:3000/runs/abc"
    first = router.route(failing, "events_clickhouse", run_url, NOW)
    assert first is not None and first.status == "firing"
    assert router.route(failing, "events_clickhouse", run_url, NOW + timedelta(minutes=5)) is None
    assert router.route(failing, "events_clickhouse", run_url, NOW + timedelta(minutes=10)) is None
    again = router.route(failing, "events_clickhouse", run_url, NOW + timedelta(minutes=31))
    assert again.repeats == 2
    passing = checks.CheckOutcome("freshness", True, "ERROR", "2 customers fresh")
    resolved = router.route(passing, "events_clickhouse", run_url, NOW + timedelta(minutes=40))
    assert resolved.status == "resolved"
    assert router.route(passing, "events_clickhouse", run_url, NOW + timedelta(minutes=50)) is None

    assert [(a["status"], a["repeats"]) for a in received] == [
        ("firing", 0),
        ("firing", 2),
        ("resolved", 0),
    ]
    assert received[0]["check"] == "freshness" and received[0]["asset"] == "events_clickhouse"
    assert received[0]["evidence"] == ["stale: newest landed event 30.0 min old"]
    assert received[0]["run_url"] == run_url
    assert [json.loads(line)["status"] for line in log_file.read_text().splitlines()] == [
        "firing",
        "firing",
        "resolved",
    ]


def test_slack_payload_and_a_dead_webhook(tmp_path: Path, webhook) -> None:
    url, received = webhook
    failing = checks.CheckOutcome(
        "click_fraud",
        False,
        "ERROR",
        "1 signs of click fraud",
        ["adnet: 250 ad clicks from ip 203.0.113.66"],
    )
    AlertRouter([WebhookSink(url, "slack")], tmp_path / "s.json").route(
        failing, "events_clickhouse", "http://ui/runs/1", NOW
    )
    message = received[0]
    assert message["text"].startswith(":rotating_light: [FIRING] click_fraud on events_clickhouse")
    assert "203.0.113.66" in message["blocks"][1]["text"]["text"]
    assert "<http://ui/runs/1|Dagster run>" in message["blocks"][2]["elements"][0]["text"]

    # The webhook is down, the log file still takes the alert; with no sink at all it raises.
    dead = WebhookSink("http://127.0.0.1:9/nothing", timeout_s=1)
    log_file = tmp_path / "a.log"
    AlertRouter([dead, LogFileSink(log_file)], tmp_path / "t.json").route(failing, "x", None, NOW)
    assert len(log_file.read_text().splitlines()) == 1
    with pytest.raises(RuntimeError, match="no alert sink took the alert"):
        AlertRouter([dead], tmp_path / "u.json").route(failing, "x", None, NOW)
