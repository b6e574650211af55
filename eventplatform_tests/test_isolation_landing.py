"""Tenant isolation at landing: nothing one customer produces can stall a shard.

The worst inputs a shard meets are well-formed events that are merely unusual: a history
replay, a device whose clock says 1970 or 2045, a cost that would spend a budget at once.
Each lands, or goes to the dead-letter topic with a stable reason, and the shard moves on.
Also here: the lake stays a bounded number of files for a batch spread over years, a
ClickHouse insert never exceeds the server's partitions-per-insert limit (also when a batch
is replayed after a kill -9), and a second lander on a shard is fenced off.
"""

from __future__ import annotations

import os
import signal
import threading
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from confluent_kafka import Message, TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eventplatform.events import EventCodec, EventPolicy, EventValidator
from eventplatform.events.examples import example_event
from eventplatform.events.policy import MS_PER_DAY, REASON_COST, REASON_EVENT_TS
from eventplatform.kafka.clients import make_consumer, make_producer
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.land.batches import EventRows
from eventplatform.land.fence import ShardBusy, ShardLock
from eventplatform.land.lake import LATE_HOUR
from eventplatform.land.sources import build_lander
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count
from eventplatform_tests.test_land_crash import lander_process

NOW = datetime.now(UTC).replace(microsecond=0)
NOW_MS = int(NOW.timestamp() * 1000)
YEAR_MS = 366 * MS_PER_DAY
CODEC = EventCodec()


# -- the policy, without a broker ----------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@hsettings(max_examples=300, deadline=None)
@given(offset_ms=st.integers(min_value=-60 * YEAR_MS, max_value=60 * YEAR_MS))
def test_the_window_is_the_same_for_epoch_and_iso_timestamps(offset_ms: int) -> None:
    """Accepted exactly when inside the window, whichever way event_ts is written."""
    policy = EventPolicy()
    validator = EventValidator(policy=policy)
    event_ms = NOW_MS + offset_ms
    inside = -policy.max_age_ms <= offset_ms <= policy.max_future_ms and event_ms >= 0
    forms = [event_ms]
    if 0 <= event_ms < 253402300800000:
        forms.append(_iso(event_ms))
    for form in forms:
        datum, errors = validator.validate(example_event("click", event_ts=form), "c", NOW_MS)
        assert (datum is not None) == inside, (form, errors)
        if not inside:
            assert [e.field for e in errors] == ["event_ts"]


@pytest.mark.parametrize(
    "event_ts",
    ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59Z", 0, -1, 2**62],
)
def test_timestamps_from_broken_clocks_are_refused_with_a_reason(event_ts: object) -> None:
    datum, errors = EventValidator().validate(
        example_event("page_view", event_ts=event_ts), "c", NOW_MS
    )
    assert datum is None and [e.field for e in errors] == ["event_ts"]


@pytest.mark.parametrize("cost", [-0.01, 10_000.01, 1e300])
def test_a_cost_outside_the_cap_is_refused_with_its_reason(cost: float) -> None:
    event = example_event("conversion", event_ts=NOW_MS)
    event["payload"]["cost"] = cost
    datum, errors = EventValidator().validate(event, "c", NOW_MS)
    assert datum is None
    assert [(e.field, e.reason) for e in errors] == [("payload.cost", REASON_COST)]


def _message(datum: dict, offset: int) -> Message:
    return Message(
        topic="events.raw",
        partition=0,
        offset=offset,
        key=datum["customer_id"].encode(),
        value=CODEC.encode(datum),
    )


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            st.integers(min_value=-30 * YEAR_MS, max_value=30 * YEAR_MS),
            st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e12, allow_nan=False)),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_the_lander_keeps_or_dead_letters_every_event_by_the_same_policy(
    events: list[tuple[int, float | None]],
) -> None:
    """What bypassed the collector (produced to the topic directly) meets the same rules:
    every message is a row or a dead letter with the reason, never both, never neither."""
    policy = EventPolicy()
    rows = EventRows(policy)
    messages, expected = [], {}
    for i, (offset_ms, cost) in enumerate(events):
        # an event without a cost is a page view (impressions always have one)
        datum = decoded_event("page_view" if cost is None else "impression", "c", NOW)
        datum["event_id"] = f"e{i}"
        datum["event_ts"] = max(0, NOW_MS + offset_ms)
        if cost is not None:
            datum["payload"]["cost"] = cost
        messages.append(_message(datum, i))
        reason = None
        if policy.event_ts_problem(datum["event_ts"], NOW_MS):
            reason = REASON_EVENT_TS
        elif cost is not None and policy.cost_problem(cost):
            reason = REASON_COST
        expected[f"e{i}"] = reason
    table, dead = rows.build(messages, NOW_MS)
    landed = set(table.column("event_id").to_pylist())
    dead_reasons = {CODEC.decode(d.value)["event_id"]: d.reason for d in dead}
    assert landed.isdisjoint(dead_reasons) and len(landed) + len(dead) == len(events)
    assert landed == {e for e, reason in expected.items() if reason is None}
    assert dead_reasons == {e: r for e, r in expected.items() if r is not None}
    assert all(d.source_offset is not None and d.stage == "land" for d in dead)


# -- on the real broker ------------------------------------------------------------------


def _produce_spread(settings: Settings, n: int, years: float) -> dict[str, int]:
    """``n`` valid events of two customers received now, event_ts spread evenly over the
    last ``years`` (a history replay or broken clocks). Returns event_ts by event_id."""
    producer = make_producer(settings.kafka.bootstrap)
    step_ms = int(years * 365.25 * MS_PER_DAY / n)
    sent = {}
    for i in range(n):
        customer = f"replayer-{i % 2}"
        event_ts = NOW_MS - i * step_ms
        datum = decoded_event("page_view", customer, NOW, event_id=f"h{i:05d}")
        datum["event_ts"] = event_ts  # as a producer that bypasses the collector may send it
        producer.produce(settings.kafka.raw_topic, key=customer.encode(), value=CODEC.encode(datum))
        sent[datum["event_id"]] = event_ts
    assert producer.flush(30) == 0
    return sent


def _dead_letters(settings: Settings, expected: int) -> list:
    consumer = make_consumer(settings.kafka.bootstrap, f"dlq-read-{os.getpid()}")
    consumer.subscribe([settings.kafka.dlq_topic])
    letters = []
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while len(letters) < expected and datetime.now(UTC) < deadline:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            letters.append(parse_dead_letter(message))
    consumer.close()
    return letters


def _lake(settings: Settings) -> tuple[set[str], int, int]:
    """(event ids, rows, files) of the events lake."""
    files = list((settings.lake_dir / "events").rglob("*.parquet"))
    if not files:
        return set(), 0, 0
    ids = [
        r[0]
        for r in duckdb.sql(
            f"SELECT event_id FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
        ).fetchall()
    ]
    return set(ids), len(ids), len(files)


def _lag(settings: Settings) -> int:
    consumer = make_consumer(settings.kafka.bootstrap, settings.land.group_id)
    parts = [TopicPartition(settings.kafka.raw_topic, p) for p in range(4)]
    lag = 0
    for tp in consumer.committed(parts, timeout=10):
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        lag += high - max(tp.offset, 0)
    consumer.close()
    return lag


def test_twenty_years_in_one_batch_land_or_go_to_the_dlq_and_the_shard_moves_on(
    topics: Settings,
) -> None:
    """The reproduction: 3,000 valid events whose event_ts span 20 years, one batch. Before,
    ClickHouse refused the insert (more than 100 partitions) on every retry: the shard
    stopped for good. Now the three years inside the window land, the rest is dead-lettered
    with its reason, everything reconciles, and the lag is 0."""
    settings = topics
    settings.land.raw_shards = 1
    sent = _produce_spread(settings, 3000, years=20)
    policy = settings.event_policy
    inside = {e for e, ts in sent.items() if policy.event_ts_problem(ts, NOW_MS) is None}
    assert 300 < len(inside) < 600  # about 3 of the 20 years

    summary = build_lander(settings, "raw", 0).run()
    assert summary.rows == len(inside) and summary.dead_letters == len(sent) - len(inside)
    letters = _dead_letters(settings, len(sent) - len(inside))
    assert {letter.reason for letter in letters} == {REASON_EVENT_TS}
    dead_ids = {CODEC.decode(letter.value)["event_id"] for letter in letters}
    lake_ids, lake_rows, lake_files = _lake(settings)
    assert lake_ids == inside and lake_rows == len(inside)
    assert dead_ids | lake_ids == set(sent) and not dead_ids & lake_ids
    ch = clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events")
    assert ch == [(len(inside), len(inside))]
    assert _lag(settings) == 0
    # Old events are filed by day, not by hour: at most a file per partition and day.
    days = {datetime.fromtimestamp(sent[e] / 1000, UTC).date() for e in inside}
    assert lake_files <= 4 * len(days) + 4 * 49
    late_folders = list((settings.lake_dir / "events").rglob(f"event_hour={LATE_HOUR}"))
    assert late_folders


def test_a_batch_over_more_months_than_clickhouse_takes_lands_once_even_after_kill_nine(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a window of 25 years (an operator who lands all history), one batch spans 240
    months: it is inserted in groups of at most 100 partitions, each with its own token.
    Killed after the inserts and replayed, the same groups and tokens make ClickHouse drop
    the repeat: every event once."""
    monkeypatch.setenv("EP_EVENTS_MAX_AGE_DAYS", str(25 * 366))
    settings = topics
    sent = _produce_spread(settings, 2400, years=20)
    env = {
        "EP_EVENTS_MAX_AGE_DAYS": str(25 * 366),
        "EP_LAND_BATCH_MAX_RECORDS": "5000",
        "EP_LAND_BATCH_MAX_WAIT_S": "1.0",
    }
    crashed = lander_process("after_clickhouse", idle_stop_s=5, **env)
    out, _ = crashed.communicate(timeout=120)
    assert crashed.returncode == -signal.SIGKILL, out
    finished = lander_process(None, idle_stop_s=5, **env)
    out, _ = finished.communicate(timeout=120)
    assert finished.returncode == 0, out
    assert "replaying the batch" in out
    ch = clickhouse_count(
        settings,
        "SELECT count(), uniqExact(event_id), uniqExact(toYYYYMM(event_ts)) FROM {db}.events",
    )
    assert ch[0][:2] == (len(sent), len(sent)) and ch[0][2] > 200
    lake_ids, lake_rows, _ = _lake(settings)
    assert lake_ids == set(sent) and lake_rows == len(sent)
    assert _lag(settings) == 0


def test_a_second_lander_on_a_shard_is_fenced_off(topics: Settings) -> None:
    """A CLI `eventplatform land` beside a sensor's run (or a run thought dead) must not
    land the same shard: it waits for the lock, then fails and says who holds it. Once the
    first lander is done, the shard is free again, and every event landed once."""
    settings = topics
    settings.land.raw_shards = 1
    sent = _produce_spread(settings, 200, years=0.001)
    first = build_lander(settings, "raw", 0)
    holding = ShardLock(first.lock.path, "shard")
    holding.acquire(0)  # as a running lander holds it
    try:
        cli = lander_process(None, idle_stop_s=5, EP_LAND_SHARD_LOCK_WAIT_S="1")
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode != 0 and "is being landed by another process" in out, out
        assert f"pid {os.getpid()}" in out
        with pytest.raises(ShardBusy):
            settings.land.shard_lock_wait_s = 0.5
            build_lander(settings, "raw", 0).run()
    finally:
        holding.release()
    assert _lake(settings)[1] == 0  # nobody landed while the lock was held

    # Two landers at once in one process: one lands, the other is refused.
    results: dict[str, object] = {}

    def land(name: str) -> None:
        try:
            results[name] = build_lander(settings, "raw", 0).run().rows
        except ShardBusy as exc:
            results[name] = exc

    threads = [threading.Thread(target=land, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    rows = [r for r in results.values() if isinstance(r, int)]
    assert sum(rows) == len(sent)
    lake_ids, lake_rows, _ = _lake(settings)
    assert lake_ids == set(sent) and lake_rows == len(sent)
    assert clickhouse_count(settings, "SELECT count() FROM {db}.events") == [(len(sent),)]


def test_dead_letters_the_broker_refuses_are_never_committed_past(topics: Settings) -> None:
    """A dead letter the broker rejects (here: the DLQ topic's message size limit is
    smaller than the poison message) is not counted as delivered: the batch is not
    committed, its manifest stays for the replay, and the run fails loudly."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from eventplatform.kafka.clients import make_admin

    settings = topics
    settings.land.raw_shards = 1
    settings.land.commit_timeout_s = 20
    admin = make_admin(settings.kafka.bootstrap)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        settings.kafka.dlq_topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    producer = make_producer(settings.kafka.bootstrap)
    producer.produce(
        settings.kafka.raw_topic, key=b"c", value=b"\0" + os.urandom(20_000)
    )  # random: lz4 cannot shrink it under the limit
    assert producer.flush(10) == 0

    lander = build_lander(settings, "raw", 0)
    with pytest.raises(RuntimeError, match="dead letters not acknowledged"):
        lander.run()
    assert lander.manifest.read() is not None
    assert _lag(settings) == 1


def test_the_collector_answers_and_dead_letters_policy_breaks_with_their_reasons(
    topics: Settings,
) -> None:
    """Over HTTP: an event from a clock at 1970, one from 2045, one with a cost over the cap
    and one with a negative cost are each a rejected event in the 202, with the field and
    the setting named, and in the DLQ with their stable reasons; the good event is accepted."""
    import httpx
    import orjson

    from eventplatform.collect.customers import CustomerStore
    from eventplatform_tests.test_collector import auth, read_topic, running_collector

    settings = topics
    key = CustomerStore(settings.customers_db).add("clockless")
    far_future = NOW_MS + 19 * YEAR_MS
    batch = [
        example_event("page_view", event_id="fine", event_ts=NOW_MS),
        example_event("page_view", event_id="epoch", event_ts="1970-01-01T00:00:00Z"),
        example_event("click", event_id="future", event_ts=far_future),
        example_event("conversion", event_id="costly", event_ts=NOW_MS),
        example_event("impression", event_id="negative", event_ts=NOW_MS),
    ]
    batch[3]["payload"]["cost"] = 1e9
    batch[4]["payload"]["cost"] = -5.0
    with running_collector(settings) as collector:
        answer = httpx.post(f"{collector.url}/v1/events", json=batch, headers=auth(key))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["accepted"], body["event_ids"]) == (1, ["fine"])
    rejected = {r["index"]: " ".join(r["errors"]) for r in body["rejected"]}
    assert set(rejected) == {1, 2, 3, 4}
    assert "event_ts: more than" in rejected[1] and "EP_EVENTS_MAX_AGE_DAYS" in rejected[1]
    assert "EP_EVENTS_MAX_FUTURE_S" in rejected[2]
    assert "payload.cost" in rejected[3] and "EP_BUDGETS_MAX_EVENT_COST" in rejected[4]
    letters = [parse_dead_letter(m) for m in read_topic(settings, settings.kafka.dlq_topic, 4)]
    reasons = {orjson.loads(letter.value)["event_id"]: letter.reason for letter in letters}
    assert reasons == {
        "epoch": REASON_EVENT_TS,
        "future": REASON_EVENT_TS,
        "costly": REASON_COST,
        "negative": REASON_COST,
    }
