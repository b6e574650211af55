"""Enrichment inside the landing batch, on the real broker: kill -9 during enrichment, again
and again, while events keep coming; afterwards every event is landed once, in the lake and
in ClickHouse, with the same enriched values in both, the values a fresh enrichment of the
same events gives (a customer in hash mode: its salt is read by every new process)."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime

import duckdb

from eventplatform.collect.customers import CustomerStore
from eventplatform.enrich import Enricher, Reference
from eventplatform.enrich.customer_settings import SettingsStore
from eventplatform.events import EventCodec
from eventplatform.events.arrow import ENRICHED_FIELDS, events_to_arrow
from eventplatform.kafka.clients import make_producer
from eventplatform.land.sources import build_lander
from eventplatform.marts.build import event_bytes_sql
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_land import clickhouse_count
from eventplatform_tests.test_land_crash import lander_process

EVENTS = 3000
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "\x00junk",
)
COMPARED = [
    "event_id",
    "ip",
    *[f.name for f in ENRICHED_FIELDS if f.name != "enrich_version"],
    "event_bytes",  # measured after the IP's anonymisation: the row as landed
]


def enriched_event(i: int) -> dict:
    customer = ("hashing", "plain")[i % 2]
    return decoded_event(
        "page_view",
        customer,
        datetime.now(UTC),
        event_id=f"e{i:05d}",
        ip=f"81.2.{i % 256}.{i % 7}" if i % 50 else "not-an-ip",
        user_agent=AGENTS[i % 3],
        payload={
            "url": f"https://shop.example/p/{i}?utm_source=s{i % 4}&gclid=g{i % 3}",
            "referrer": "https://www.google.com/" if i % 2 else "https://shop.example/cart",
        },
    )


def produce(settings: Settings, done: threading.Event, sent: list[dict]) -> None:
    producer, codec = make_producer(settings.kafka.bootstrap), EventCodec()
    for i in range(EVENTS):
        event = enriched_event(i)
        producer.produce(
            settings.kafka.raw_topic, key=event["customer_id"].encode(), value=codec.encode(event)
        )
        sent.append(event)
        if i % 100 == 0:
            producer.poll(0)
            time.sleep(0.15)
    assert producer.flush(30) == 0
    done.set()


def test_kill_dash_nine_during_enrichment_lands_every_event_once_with_the_same_values(
    topics: Settings, monkeypatch
) -> None:
    settings = topics
    monkeypatch.setenv("EP_ENRICH_CHANGE_DELAY_S", "0")  # the children read it too
    store = CustomerStore(settings.customers_db)
    for name in ("hashing", "plain"):
        store.add(name)
    SettingsStore(settings.customers_db, 0).set(
        "hashing", ip_mode="hash", internal_domains=["shop.example"]
    )
    time.sleep(0.01)
    sent: list[dict] = []
    done = threading.Event()
    producing = threading.Thread(target=produce, args=(settings, done, sent))
    producing.start()

    outputs = []
    for _ in range(5):
        process = lander_process("during_enrichment")
        out, _ = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, out
        outputs.append(out)
    assert sum("replaying the batch" in out for out in outputs) >= 3, outputs
    producing.join(timeout=120)
    assert done.is_set()

    settings.land.raw_shards = 1
    settings.land.idle_stop_s = 2.0
    summary = build_lander(settings, "raw", 0).run()
    assert summary.stopped_because.startswith("idle")

    columns = ", ".join(COMPARED)
    lake = duckdb.sql(
        f"SELECT {columns} FROM read_parquet('{settings.lake_dir}/events/**/*.parquet') "
        "ORDER BY event_id"
    ).fetchall()
    assert len(lake) == EVENTS == len({r[0] for r in lake})
    clickhouse = clickhouse_count(
        settings, f"SELECT {columns} FROM {{db}}.events ORDER BY event_id"
    )
    assert [tuple(r) for r in clickhouse] == lake  # the same values in both sinks
    # each row's size as sent is the marts' definition of it, over the row as landed
    sizes = duckdb.sql(
        f"SELECT count(*) FILTER (WHERE event_bytes = ({event_bytes_sql()})), count(*) "
        f"FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
    ).fetchall()
    assert sizes == [(EVENTS, EVENTS)]

    # ... and the values a fresh enrichment of the sent events gives.
    base = events_to_arrow(sent, settings.kafka.raw_topic, 0, list(range(len(sent))), 0)
    base = base.drop_columns([f.name for f in ENRICHED_FIELDS])
    expected = Enricher(Reference(SettingsStore(settings.customers_db, 0))).enrich(base)
    expected_rows = sorted(
        tuple(r[c] for c in COMPARED) for r in expected.select(COMPARED).to_pylist()
    )
    assert expected_rows == lake
    by_id = {r[0]: dict(zip(COMPARED, r, strict=True)) for r in lake}
    assert by_id["e00002"]["ip_mode"] == "hash" and len(by_id["e00002"]["ip"]) == 32
    assert by_id["e00001"]["ip"] == "81.2.1.0" and by_id["e00001"]["geo_country"] == "RU"
    assert by_id["e00000"]["referrer_class"] == "internal"  # own domain, before its gclid
    assert by_id["e00001"]["is_bot"] is True and by_id["e00002"]["ua_browser"] is None
    assert by_id["e00050"]["ip"] is None  # not an address: never landed
