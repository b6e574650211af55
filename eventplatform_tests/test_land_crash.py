"""Crash injection: kill -9 the landing process again and again while events keep coming.

Afterwards every produced event is in the lake once and in ClickHouse once, and every poison
message is in the DLQ (counted by its source position). The kills are real SIGKILLs of a
separate process: at named points inside a batch (``EP_LAND_CRASH_AT``, one per point the
design must survive) and at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import duckdb

from eventplatform.events import EventCodec
from eventplatform.kafka.clients import make_consumer, make_producer
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.land.checkpoint import Manifest
from eventplatform.land.lake import TMP_PREFIX
from eventplatform.land.sources import build_lander
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count, produce_events

CRASH_POINTS = [
    "after_manifest",
    "after_decode",
    "after_parquet",
    "after_clickhouse",
    "after_dead_letters",
    "after_commit",
]
TOTAL_EVENTS = 6000
POISON_EVERY = 500


def produce_steadily(settings: Settings, done: threading.Event, sent: list[str]) -> None:
    """About 6000 events over ~12 s, keyed by customer, with a poison message now and then."""
    from datetime import UTC, datetime

    producer, codec = make_producer(settings.kafka.bootstrap), EventCodec()
    for i in range(TOTAL_EVENTS):
        customer = f"c{i % 5}"
        if i % POISON_EVERY == 0:
            producer.produce(settings.kafka.raw_topic, key=customer.encode(), value=b"poison")
            continue
        event = decoded_event("page_view", customer, datetime.now(UTC), event_id=f"e{i:05d}")
        producer.produce(settings.kafka.raw_topic, key=customer.encode(), value=codec.encode(event))
        sent.append(event["event_id"])
        if i % 100 == 0:
            producer.poll(0)
            time.sleep(0.2)
    assert producer.flush(30) == 0
    done.set()


def lander_process(
    crash_at: str | None, idle_stop_s: int = 30, shard: int = 0, **env_vars: str
) -> subprocess.Popen:
    """`eventplatform land --shard N` of events.raw: its one shard unless ``env_vars`` set
    EP_LAND_RAW_SHARDS, in small batches unless they say otherwise."""
    env = {
        **os.environ,
        "EP_LAND_RAW_SHARDS": "1",
        "EP_LAND_BATCH_MAX_RECORDS": "150",
        "EP_LAND_BATCH_MAX_WAIT_S": "0.2",
        **env_vars,
    }
    if crash_at:
        env["EP_LAND_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventplatform.cli",
            "land",
            "--shard",
            str(shard),
            "--idle-stop",
            str(idle_stop_s),
            "--quiet",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_dash_nine_at_every_point_loses_and_duplicates_nothing(topics: Settings) -> None:
    settings = topics
    rng = random.Random(7)
    sent: list[str] = []
    done = threading.Event()
    producer = threading.Thread(target=produce_steadily, args=(settings, done, sent))
    producer.start()

    kills, outputs = [], []
    for crash_at in CRASH_POINTS + [None] * 8:
        process = lander_process(crash_at)
        if crash_at:
            out, _ = process.communicate(timeout=120)
        else:
            time.sleep(rng.uniform(1.5, 4.0))  # start-up takes ~1.5 s: kill mid-work
            process.send_signal(signal.SIGKILL)
            out, _ = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, out
        kills.append(crash_at or "random")
        outputs.append(out)
    assert len(kills) >= 10
    # Each crash inside a batch left a manifest that the next run replayed.
    assert sum("replaying the batch" in out for out in outputs) >= 5, outputs
    producer.join(timeout=120)
    assert done.is_set()

    settings.land.raw_shards = 1
    settings.land.idle_stop_s = 2.0
    summary = build_lander(settings, "raw", 0).run()
    assert summary.stopped_because.startswith("idle")

    # Every produced event exactly once, in both sinks.
    lake = duckdb.sql(
        f"SELECT count(), count(DISTINCT event_id) "
        f"FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
    ).fetchall()[0]
    assert lake == (len(sent), len(sent))
    lake_ids = {
        r[0]
        for r in duckdb.sql(
            f"SELECT event_id FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
        ).fetchall()
    }
    assert lake_ids == set(sent)
    assert clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events") == [
        (len(sent), len(sent))
    ]
    assert not list(settings.lake_dir.rglob(f"{TMP_PREFIX}*"))  # stale temporaries cleaned

    # Every poison message is in the DLQ (a repeat after a crash names the same position).
    consumer = make_consumer(settings.kafka.bootstrap, "dlq-check")
    consumer.subscribe([settings.kafka.dlq_topic])
    positions = set()
    idle_until = time.monotonic() + 10
    while time.monotonic() < idle_until:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        letter = parse_dead_letter(message)
        assert letter.reason == "bad_marker" and letter.value == b"poison"
        positions.add((letter.source_partition, letter.source_offset))
        idle_until = time.monotonic() + 3
    consumer.close()
    assert len(positions) == TOTAL_EVENTS // POISON_EVERY


def test_a_crash_while_the_next_batch_decodes_replays_the_batch_in_flight(
    topics: Settings,
) -> None:
    """Behind, batch n+1 is decoded while batch n's sinks write; kill -9 then (at the second
    batch's decode, and again in the replaying run's enrichment of the third) and the next run
    replays exactly the batch in flight: every event once in both sinks."""
    settings = topics
    sent = produce_events(settings, 1_000)  # a backlog: every batch closes full
    for crash_at in ("after_decode#2", "during_enrichment#3"):
        process = lander_process(
            crash_at, EP_LAND_BATCH_MAX_RECORDS="100", EP_LAND_BATCH_MAX_WAIT_S="5"
        )
        out, _ = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, out
        if crash_at.startswith("during"):
            assert "replaying the batch" in out, out  # the batch in flight at the first kill
    manifest = Manifest.of_shard(
        settings.lake_dir, settings.land.group_id, settings.kafka.raw_topic, 0, 1
    )
    in_flight = manifest.read()
    assert in_flight is not None and sum(r.last - r.first + 1 for r in in_flight) == 100

    settings.land.raw_shards = 1
    summary = build_lander(settings, "raw", 0).run()
    assert summary.replayed_batches == 1 and summary.stopped_because.startswith("idle")
    lake = duckdb.sql(
        f"SELECT count(), count(DISTINCT event_id) "
        f"FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
    ).fetchall()[0]
    assert lake == (len(sent), len(sent))
    assert clickhouse_count(settings, "SELECT count(), uniqExact(event_id) FROM {db}.events") == [
        (len(sent), len(sent))
    ]
