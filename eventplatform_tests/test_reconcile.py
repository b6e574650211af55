"""Reconciliation by offsets: landed, dead-lettered, pending, missing and duplicated, exactly."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from eventplatform.clickhouse import ClickHouse, platform_clickhouse
from eventplatform.events import EventCodec
from eventplatform.events.arrow import events_to_arrow
from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.dlq import DeadLetter, send_dead_letter
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.reconcile import format_table, reconcile
from eventplatform.settings import REPO_ROOT
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import produce_events


def test_reconcile_accounts_for_every_message(bootstrap: str, unique: str, tmp_path: Path):
    raw, dlq, group = f"raw.{unique}", f"dlq.{unique}", f"land-{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(raw, 1, 1, {}), TopicSpec(dlq, 1, 1, {})])
    clickhouse = ClickHouse(f"chdb://{tmp_path}/ch", "ep_rec")
    clickhouse.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
    since = datetime.now(UTC) - timedelta(seconds=5)

    codec, producer = EventCodec(), make_producer(bootstrap)
    sent: list[tuple[str, dict | None]] = []
    for i in range(20):
        customer = "alpha" if i < 12 else "beta"
        if i in (3, 15):  # poison: not Avro
            sent.append((customer, None))
            producer.produce(raw, key=customer.encode(), value=b"garbage")
        else:
            event = decoded_event("click", customer, datetime.now(UTC), event_id=f"e{i}")
            sent.append((customer, event))
            producer.produce(raw, key=customer.encode(), value=codec.encode(event))
    send_dead_letter(
        producer,
        dlq,
        DeadLetter("validation", "colour: unknown field", "collect", b"{}", customer_id="beta"),
    )
    assert producer.flush(30) == 0

    # The landing job processed offsets 0..15: landed the good ones, except offset 7 (lost!),
    # landed offset 9 twice (duplicate), dead-lettered 3 and 15, committed 16.
    good = [
        (offset, event)
        for offset, (_, event) in enumerate(sent[:16])
        if event is not None and offset != 7
    ]
    rows = [e for _, e in good] + [sent[9][1]]
    offsets = [o for o, _ in good] + [9]
    with clickhouse.session() as client:
        client.insert_arrow("ep_rec.events", events_to_arrow(rows, raw, 0, offsets, 0))
    for offset in (3, 15):
        send_dead_letter(
            producer,
            dlq,
            DeadLetter(
                "bad_marker",
                "expected c301",
                "land",
                b"garbage",
                customer_id=sent[offset][0],
                source_topic=raw,
                source_partition=0,
                source_offset=offset,
            ),
        )
    assert producer.flush(30) == 0
    consumer = make_consumer(bootstrap, group)
    consumer.commit(offsets=[TopicPartition(raw, 0, 16)], asynchronous=False)
    consumer.close()

    result = reconcile(bootstrap, clickhouse, [raw], dlq, group, since)
    by_customer = result.by_customer()
    alpha, beta = by_customer["alpha"], by_customer["beta"]
    assert (alpha.in_kafka, alpha.landed, alpha.dead_landing, alpha.pending) == (12, 10, 1, 0)
    assert (alpha.unaccounted, alpha.duplicates) == (1, 1)  # offset 7 lost, 9 twice
    assert (beta.in_kafka, beta.landed, beta.dead_landing, beta.pending) == (8, 3, 1, 4)
    assert (beta.unaccounted, beta.rejected_at_intake) == (0, 1)
    problems = result.problems()
    assert len(problems) == 2
    assert "alpha" in problems[0] and "1 messages neither landed, dead-lettered nor pending" in (
        problems[0] + problems[1]
    )
    table = format_table(result)
    assert table.splitlines()[-1].split() == ["total", "20", "0", "13", "2", "4", "1", "1", "1"]


def test_reconcile_is_exact_while_landing_commits_and_still_finds_a_real_loss(
    topics, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Reconciliations taken again and again while a landing process commits small batches
    never report a loss or a duplicate (read in the old order, landed rows first, a batch
    committed between the reads was missing); once rows are deleted, exactly those are."""
    settings = topics
    since = datetime.now(UTC) - timedelta(minutes=1)
    # A dead-letter topic with some history, as a live one has: reading it takes a moment,
    # the moment in which the old order (landed rows, dead letters, then committed offsets)
    # saw a batch committed and counted it nowhere.
    letters = make_producer(settings.kafka.bootstrap)
    for i in range(20_000):
        rejected = DeadLetter("validation", "x: bad", "collect", b"{}", customer_id="cust-9")
        send_dead_letter(letters, settings.kafka.dlq_topic, rejected)
        if i % 5000 == 0:
            letters.poll(0)
    assert letters.flush(30) == 0
    sent: dict[str, dict] = {}
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        for round_ in range(25):
            sent.update(produce_events(settings, 100, start=round_ * 100))
            time.sleep(0.1)
        producing.clear()

    # The landing run in its own process, as in production (in this one, the loop below
    # held the GIL most of the time and the run crawled): small batches, one shard.
    for name, value in {
        "EP_LAND_RAW_SHARDS": "1",
        "EP_LAND_BATCH_MAX_RECORDS": "150",
        "EP_LAND_BATCH_MAX_WAIT_S": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    producer = threading.Thread(target=produce, daemon=True)  # daemon: a failure ends it
    producer.start()
    log_path = tmp_path / "land.log"
    with open(log_path, "wb") as log:
        lander = subprocess.Popen(
            [sys.executable, "-m", "eventplatform.cli", "land", "--idle-stop", "2"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    clickhouse = platform_clickhouse(settings)
    group, raw, dlq = settings.land.group_id, settings.kafka.raw_topic, settings.kafka.dlq_topic
    snapshots = []
    try:
        while lander.poll() is None:
            result = reconcile(settings.kafka.bootstrap, clickhouse, [raw], dlq, group, since)
            t = result.totals()
            assert result.problems() == [], (result.problems(), format_table(result))
            assert t.in_kafka == t.landed + t.pending and t.duplicates == 0
            snapshots.append((t.in_kafka, t.landed, t.pending))
    finally:
        if lander.poll() is None:
            lander.kill()
    producer.join()
    landed_line = log_path.read_text().splitlines()[-1]
    assert lander.returncode == 0 and landed_line.startswith("landed 2500 rows"), landed_line
    assert not producing.is_set()
    # Reconciliations caught batches on their way: some landed, some still pending.
    assert sum(1 for _, landed, pending in snapshots if landed and pending) >= 3, snapshots
    print(f"{len(snapshots)} reconciliations while landing: {snapshots}")

    final = reconcile(settings.kafka.bootstrap, clickhouse, [raw], dlq, group, since).totals()
    assert (final.in_kafka, final.landed, final.pending, final.unaccounted) == (2500, 2500, 0, 0)
    # A real loss: rows of committed offsets deleted from ClickHouse are reported, exactly.
    with clickhouse.session() as client:
        client.command(
            f"ALTER TABLE {clickhouse.database}.events DELETE WHERE event_id IN "
            "('ev-000007', 'ev-001234', 'ev-001998') SETTINGS mutations_sync = 2"
        )
    lost = reconcile(settings.kafka.bootstrap, clickhouse, [raw], dlq, group, since)
    assert lost.totals().unaccounted == 3 and lost.totals().landed == 2497
    assert [p.split()[0] + " " + p.split()[3] for p in lost.problems()] == ["cust-0 1", "cust-1 2"]
