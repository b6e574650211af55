"""Dagster event-log growth of a landing run with sub-second batches, per hour.

    .venv/bin/python bench/bench_event_log.py [--rate 2000] [--duration 60]

Starts a throwaway broker, produces a steady stream of events (impressions among them, so the
budget controller runs too) for ``--duration`` seconds while the landing job `land_events`
runs in process on a SQLite Dagster instance (as `make run`'s), once recording every batch
(`EP_LAND_REPORT_EVERY_S=0`) and once with the default interval (one record per 5 s with each
batch's offsets). Prints per configuration the batches, the materializations, and the event
log's rows and bytes (the run's SQLite file plus the index) scaled to an hour.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import throwaway_broker
from dagster import AssetKey, DagsterInstance

from eventplatform.defs.ingest.landing import land_events
from eventplatform.defs.resources import platform_resources
from eventplatform.events import EventCodec, EventValidator
from eventplatform.kafka.clients import make_admin, make_producer
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import get_settings
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec


def pool_of(n: int) -> list[dict]:
    generator = TrafficGenerator(TrafficSpec(seed=9, customers=10))
    validator = EventValidator()
    now = int(time.time() * 1000)
    out = []
    for simulated in generator.events(n, now):
        datum, errors = validator.validate(simulated.event, simulated.customer_id, now)
        if not errors:
            out.append(datum)
    return out


def produce(bootstrap: str, topic: str, pool: list[dict], rate: float, seconds: float) -> int:
    codec, producer = EventCodec(), make_producer(bootstrap)
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        received = int(time.time() * 1000)
        while sent < int(elapsed * rate):
            datum = dict(pool[sent % len(pool)], event_id=f"log-{sent:010d}", received_ts=received)
            producer.produce(topic, key=datum["customer_id"].encode(), value=codec.encode(datum))
            sent += 1
        producer.poll(0)
        time.sleep(0.01)
    assert producer.flush(60) == 0
    return sent


def event_log(home: Path) -> dict[str, tuple[int, int]]:
    """Rows and bytes (of the stored events) per event type, over every event_logs table of
    the instance's SQLite storage (a run's own file and the index)."""
    out: dict[str, tuple[int, int]] = {}
    for db in home.rglob("*.db"):
        con = sqlite3.connect(db)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            if "event_logs" not in tables:
                continue
            for kind, rows, size in con.execute(
                "SELECT coalesce(dagster_event_type, 'log message'), count(*), "
                "sum(length(event)) FROM event_logs GROUP BY 1"
            ):
                seen = out.get(kind, (0, 0))
                out[kind] = (seen[0] + rows, seen[1] + (size or 0))
        finally:
            con.close()
    return out


def measure(bootstrap: str, tmp: Path, every_s: float, rate: float, duration: float, pool):
    run_dir = Path(tempfile.mkdtemp(prefix="log-", dir=tmp))
    os.environ.update(
        {
            "EP_DATA_DIR": str(run_dir / "data"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EP_KAFKA_RAW_TOPIC": f"events.raw.{run_dir.name}",
            "EP_LAND_RAW_SHARDS": "1",
            "EP_LAND_IDLE_STOP_S": "3",
            "EP_LAND_REPORT_EVERY_S": str(every_s),
            "DAGSTER_HOME": str(run_dir / "dagster"),
        }
    )
    get_settings.cache_clear()
    settings = get_settings()
    ensure_topics(make_admin(bootstrap), platform_topics(settings.kafka))
    producing = threading.Thread(
        target=produce, args=(bootstrap, settings.kafka.raw_topic, pool, rate, duration)
    )
    home = run_dir / "dagster"
    home.mkdir(parents=True)
    with DagsterInstance.local_temp(str(home)) as instance:
        producing.start()
        started = time.monotonic()
        result = land_events.execute_in_process(
            run_config={"ops": {"land_shard": {"config": {"source": "raw", "shard": 0}}}},
            instance=instance,
            resources=platform_resources(settings),
        )
        wall = time.monotonic() - started
        producing.join()
        assert result.success
        records = instance.fetch_materializations(AssetKey("events_lake"), limit=10_000).records
        batches = sum(int(r.asset_materialization.metadata["batches"].value) for r in records)
    log = event_log(home)
    per_hour = 3600 / wall
    materialized = log.get("ASSET_MATERIALIZATION", (0, 0))
    return {
        "batches": batches,
        "materializations": len(records),
        "rows_per_hour": sum(r for r, _ in log.values()) * per_hour,
        "bytes_per_hour": sum(b for _, b in log.values()) * per_hour,
        "materialization_rows_per_hour": materialized[0] * per_hour,
        "materialization_bytes_per_hour": materialized[1] * per_hour,
        "by_type": {k: (r * per_hour, b * per_hour) for k, (r, b) in log.items()},
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--duration", type=float, default=60)
    args = parser.parse_args()
    pool = pool_of(5000)
    results = {}
    with throwaway_broker() as (bootstrap, tmp):
        for every_s in (0.0, 5.0):
            results[every_s] = measure(bootstrap, tmp, every_s, args.rate, args.duration, pool)
    print()
    print(
        "| EP_LAND_REPORT_EVERY_S | batches | materializations of events_lake | "
        "materialization rows / MiB an hour | all event-log rows / MiB an hour |"
    )
    print("| --- | --- | --- | --- | --- |")
    for every_s, r in results.items():
        print(
            f"| {every_s:g} | {r['batches']:,} | {r['materializations']:,} | "
            f"{r['materialization_rows_per_hour']:,.0f} / "
            f"{r['materialization_bytes_per_hour'] / 2**20:,.1f} | "
            f"{r['rows_per_hour']:,.0f} / {r['bytes_per_hour'] / 2**20:,.1f} |"
        )
    for every_s, r in results.items():
        top = sorted(r["by_type"].items(), key=lambda kv: -kv[1][1])[:4]
        print(
            f"EP_LAND_REPORT_EVERY_S={every_s:g}, an hour by type: "
            + ", ".join(f"{k} {rows:,.0f} rows {size / 2**20:,.1f} MiB" for k, (rows, size) in top)
        )
    print(
        f"(one landing run of one shard, {args.rate:,.0f} events/s for {args.duration:.0f} s, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )


if __name__ == "__main__":
    main()
