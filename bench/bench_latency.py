"""End-to-end latency at a steady rate: received -> queryable, and budget exhaustion -> pause.

    .venv/bin/python bench/bench_latency.py [--rate 10000] [--duration 180] [--shards 1]
                                            [--campaigns 40] [--ten-minutes]

Starts a throwaway broker, produces realistic events at a steady rate straight to
`events.raw` (each stamped `received_ts` = the moment it is produced, as the collector
does), and lands them with one `eventplatform land` process per shard, as the Dagster
sensor would start them. One shard by default: on the embedded engine, two busy landers
hand the engine back and forth every batch (see docs/landing.md); `--shards 2` shows that.
An event's latency is the time from `received_ts` to the commit of its batch, after which it
is in the lake and queryable in ClickHouse. Prints p50/p99/p99.9/max over every event, and
the slowest batches with when they landed.

The ClickHouse side: the active part count of `events` (`system.parts`) every 60 s while
it runs and after it (`--ten-minutes` runs 600 s, to see whether merges keep up). The lake
side: files per hour and bytes per file as landed, then after the compaction passes
(`eventplatform/land/compact.py`) of the hour still open and of the hour once closed.

Budgets ride on the same traffic: `--campaigns` campaigns with a daily budget of 10.00 are
loaded, and at even intervals one of them gets the impressions that spend it (1.00 each; the
tenth exhausts it). The landing processes run the budget controller after every batch that
carries cost-bearing events, as the Dagster landing run does. The pause latency is from the
exhausting event's `received_ts` to the pause message's arrival on `campaign.control`, read
by a consumer here as an ad server would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import throwaway_broker

from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns
from eventplatform.clickhouse import ClickHouse
from eventplatform.events import EventCodec, EventValidator
from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.land.compact import CompactionPolicy, compact_lake, group_positions
from eventplatform.land.lake import EVENTS_DIR, current_paths
from eventplatform.settings import REPO_ROOT
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

LANDER = """
import sys
import time
import numpy as np
import orjson
from eventplatform.budgets.signals import BudgetController
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.land.sources import build_lander
from eventplatform.settings import get_settings

settings = get_settings()
latencies = []
received_at = []
controller = BudgetController(
    platform_clickhouse(settings), settings.kafka.bootstrap, settings.kafka.control_topic
)

batches, stages, closed = [], {}, {}

timeline = []  # per batch: commit time, messages, seconds landing, max latency, budgets s

def on_batch(report):
    latencies.append(report.latencies_ms)
    if report.latencies_ms is not None:  # when each event was received (wall clock, s)
        received_at.append(time.time() - report.latencies_ms / 1000)
    batches.append((report.messages, report.seconds))
    budgets_s = 0.0
    closed[report.closed_because] = closed.get(report.closed_because, 0) + 1
    for stage, seconds in report.stage_seconds.items():
        stages[stage] = stages.get(stage, 0.0) + seconds
    if report.cost_events:
        started = time.perf_counter()
        controller.refresh()
        budgets_s = time.perf_counter() - started
        stages["budgets"] = stages.get("budgets", 0.0) + budgets_s
    if len(timeline) < 3:  # the first batches: where a cold start goes
        print(f"batch {len(timeline)}: {report.messages} messages, stages "
              + ", ".join(f"{k} {v:.3f}" for k, v in report.stage_seconds.items()), flush=True)
    worst = float(report.latencies_ms.max()) if report.latencies_ms is not None else 0.0
    timeline.append((time.time(), report.messages, report.seconds, worst, budgets_s))

lander = build_lander(settings, "raw", int(sys.argv[1]))
summary = lander.run(on_batch=on_batch)
np.save(sys.argv[2], np.concatenate([x for x in latencies if x is not None]))
np.save(sys.argv[2].replace(".npy", "-received.npy"), np.concatenate(received_at))
np.save(sys.argv[2].replace(".npy", "-batches.npy"), np.array(timeline))
sizes = np.array([b[0] for b in batches])
took = np.array([b[1] for b in batches])
print(
    f"shard {sys.argv[1]}: {summary.batches} batches, {summary.rows} rows; messages per batch "
    f"p50 {np.median(sizes):.0f} max {sizes.max()}; landing a batch p50 {np.median(took):.3f} s "
    f"p99 {np.percentile(took, 99):.3f} s; closed {closed}; seconds per stage "
    + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
)
"""


STEADY_AFTER_S = 10.0


def spend_event(pool: list[dict], campaign: str, i: int, received_ms: int) -> dict:
    """An impression that costs 1.00 for ``campaign`` (from an ad event of the pool)."""
    template = next(d for d in pool if d["event_type"] == "impression")
    datum = dict(template)
    datum["event_id"] = f"spend-{campaign}-{i}"
    datum["customer_id"] = "bench"
    datum["event_ts"] = datum["received_ts"] = received_ms
    datum["payload"] = {**template["payload"], "campaign_id": campaign, "cost": 1.0}
    return datum


def watch_pauses(bootstrap: str, pauses: dict[str, float], stop: threading.Event) -> None:
    """An ad server: follows campaign.control and notes when each pause arrives."""
    consumer = make_consumer(bootstrap, f"ad-server-{uuid.uuid4().hex[:6]}")
    consumer.subscribe(["campaign.control"])
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is None or message.error() or message.value() is None:
            continue
        signal = orjson.loads(message.value())
        if signal["action"] == "pause":
            pauses.setdefault(signal["campaign_id"], time.time())
    consumer.close()


def active_parts(clickhouse: ClickHouse) -> int:
    with clickhouse.session() as client:
        return int(
            client.command(
                "SELECT count() FROM system.parts WHERE database = 'eventplatform' "
                "AND table = 'events' AND active"
            )
        )


def lake_layout(lake_dir: Path, bootstrap: str, duration: float) -> dict[str, tuple[int, int]]:
    """(files, bytes) of the lake's events as landed, after a compaction pass of the hour still
    open, and after one once the hour is closed (run as if it were later: the grace passed)."""
    events = lake_dir / EVENTS_DIR

    def layout() -> tuple[int, int]:
        paths = current_paths(events)
        return len(paths), sum(p.stat().st_size for p in paths)

    stages = {"as landed": layout()}
    committed = group_positions(bootstrap, "eventplatform-land")
    try:
        started = time.monotonic()
        compact_lake(lake_dir, committed, CompactionPolicy())
        open_s = time.monotonic() - started
        stages[f"after compacting the open hour ({open_s:.1f} s)"] = layout()
        later = datetime.now(UTC) + timedelta(hours=1, minutes=10)
        started = time.monotonic()
        compact_lake(lake_dir, committed, CompactionPolicy(), now=later)
        closed_s = time.monotonic() - started
        stages[f"after compacting the closed hour ({closed_s:.1f} s)"] = layout()
    finally:
        committed.close()
    return stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--duration", type=float, default=180)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--campaigns", type=int, default=40)
    parser.add_argument("--ten-minutes", action="store_true", help="--duration 600")
    args = parser.parse_args()
    if args.ten_minutes:
        args.duration = 600

    generator = TrafficGenerator(TrafficSpec(seed=5, customers=20))
    validator, codec = EventValidator(), EventCodec()
    now = int(time.time() * 1000)
    pool = []
    for simulated in generator.events(20_000, now):
        datum, errors = validator.validate(simulated.event, simulated.customer_id, now)
        if not errors:
            pool.append(datum)

    with throwaway_broker() as (bootstrap, tmp):
        specs = [
            TopicSpec("events.raw", 12, 1, {}),
            TopicSpec("events.dlq", 1, 1, {}),
            TopicSpec("campaign.control", 3, 1, {"cleanup.policy": "compact"}),
        ]
        ensure_topics(make_admin(bootstrap), specs)
        clickhouse = ClickHouse(f"chdb://{tmp / 'data' / 'clickhouse'}", "eventplatform")
        clickhouse.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
        today = datetime.now(UTC).date()
        load_campaigns(
            clickhouse,
            parse_campaigns(
                "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone\n"
                + "".join(
                    f"bench,cmp-{k},1000,10,USD,{today},{today + timedelta(days=1)},UTC\n"
                    for k in range(args.campaigns)
                )
            ),
        )
        pauses: dict[str, float] = {}
        stop_watching = threading.Event()
        watcher = threading.Thread(target=watch_pauses, args=(bootstrap, pauses, stop_watching))
        watcher.start()
        env = {
            **os.environ,
            "EP_DATA_DIR": str(tmp / "data"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EP_LAND_RAW_SHARDS": str(args.shards),
            "EP_LAND_IDLE_STOP_S": "5",
            # One run per shard for the whole bench (no sensor here to start the next one).
            "EP_LAND_MAX_OPENS_EMBEDDED": "0",
        }
        landers = [
            subprocess.Popen(
                [sys.executable, "-c", LANDER, str(shard), str(tmp / f"latency-{shard}.npy")],
                cwd=REPO_ROOT,
                env=env,
            )
            for shard in range(args.shards)
        ]
        time.sleep(3)  # the landers start (imports, ClickHouse) before traffic does

        producer = make_producer(bootstrap)
        start, started_wall = time.monotonic(), time.time()
        sent, tick = 0, 0.01
        exhaust_at = [
            10 + k * (args.duration - 30) / max(1, args.campaigns) for k in range(args.campaigns)
        ]
        exhausted_ms: dict[str, int] = {}
        parts_at: list[tuple[float, int]] = []
        next_parts = 60.0
        while (elapsed := time.monotonic() - start) < args.duration:
            if elapsed >= next_parts:  # between the landers' batches (the engine's lock)
                parts_at.append((elapsed, active_parts(clickhouse)))
                next_parts += 60
            due = int(elapsed * args.rate)
            received = int(time.time() * 1000)
            while exhaust_at and elapsed >= exhaust_at[0]:
                campaign = f"cmp-{len(exhausted_ms)}"
                exhaust_at.pop(0)
                for i in range(10):  # 10 x 1.00: the tenth reaches the daily budget of 10
                    datum = spend_event(pool, campaign, i, received)
                    producer.produce("events.raw", key=b"bench", value=codec.encode(datum))
                exhausted_ms[campaign] = received
                sent += 10
                due += 10
            while sent < due:
                datum = dict(pool[sent % len(pool)])
                datum["event_id"] = f"lat-{sent:012d}"
                datum["received_ts"] = received
                producer.produce(
                    "events.raw", key=datum["customer_id"].encode(), value=codec.encode(datum)
                )
                sent += 1
            producer.poll(0)
            time.sleep(tick)
        assert producer.flush(60) == 0
        produce_rate = sent / (time.monotonic() - start)
        for lander in landers:
            assert lander.wait(timeout=300) == 0
        latencies = np.concatenate([np.load(tmp / f"latency-{s}.npy") for s in range(args.shards)])
        received_at = np.concatenate(
            [np.load(tmp / f"latency-{s}-received.npy") for s in range(args.shards)]
        )
        timelines = [np.load(tmp / f"latency-{s}-batches.npy") for s in range(args.shards)]
        stop_watching.set()
        watcher.join()
        parts_at.append((time.monotonic() - start, active_parts(clickhouse)))
        lake = lake_layout(tmp / "data" / "lake", bootstrap, args.duration)

    assert len(latencies) == sent, f"landed {len(latencies)} of {sent}"
    p50, p99, p999, top = np.percentile(latencies, [50, 99, 99.9, 100])
    print()
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| events produced (steady) | {sent:,} at {produce_rate:,.0f}/s, {args.duration:.0f}s |")
    print(f"| landing processes (shards) | {args.shards} |")
    print(f"| latency received -> queryable, p50 | {p50 / 1000:.2f} s |")
    print(f"| latency received -> queryable, p99 | {p99 / 1000:.2f} s |")
    print(f"| latency received -> queryable, p99.9 | {p999 / 1000:.2f} s |")
    print(f"| latency received -> queryable, max | {top / 1000:.2f} s |")
    # The first seconds hold a landing run's start (its first batch parses every user agent
    # anew, and the backlog that builds meanwhile): a run under the sensors starts once an
    # hour, so a 60 s window over-weights it. The same figures without them:
    steady = latencies[received_at >= started_wall + STEADY_AFTER_S]
    s50, s99, s999, stop = np.percentile(steady, [50, 99, 99.9, 100])
    print(
        f"| the same, events received after the first {STEADY_AFTER_S:.0f} s, p50 / p99 / p99.9 /"
        f" max | {s50 / 1000:.2f} / {s99 / 1000:.2f} / {s999 / 1000:.2f} / {stop / 1000:.2f} s |"
    )
    pause_s = np.array(
        [pauses[c] - exhausted_ms[c] / 1000 for c in exhausted_ms if c in pauses], dtype=float
    )
    missing = sorted(set(exhausted_ms) - set(pauses))
    if len(pause_s):
        q50, q99, q999, qmax = np.percentile(pause_s, [50, 99, 99.9, 100])
        print(f"| campaigns exhausted / paused | {len(exhausted_ms)} / {len(pause_s)} |")
        print(f"| exhausting event -> pause on campaign.control, p50 | {q50:.2f} s |")
        print(f"| exhausting event -> pause on campaign.control, p99 | {q99:.2f} s |")
        print(f"| exhausting event -> pause on campaign.control, p99.9 | {q999:.2f} s |")
        print(f"| exhausting event -> pause on campaign.control, max | {qmax:.2f} s |")
    for at, parts in parts_at:
        print(f"| active parts of `events` at {at:.0f} s | {parts} |")
    for stage, (files, size) in lake.items():
        per_hour = files * 3600 / args.duration
        print(
            f"| lake files {stage} | {files:,} ({per_hour:,.0f} an hour at this rate), "
            f"{size / max(files, 1) / 1024:,.1f} KiB per file |"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"| load average (1, 5, 15 min) at the end | {load} |")
    if missing:
        print(f"NOT PAUSED: {missing}")
    print()
    print(
        "The slowest batches (by the max latency in the batch): landed at s | messages | "
        "collecting s (since the last batch's budgets) | landing s | budgets s | max latency s"
    )
    for shard, timeline in enumerate(timelines):
        # collecting: from the end of the previous batch (its budgets included) to this one's
        # landing (each row is noted after its budgets)
        landing_started = timeline[:, 0] - timeline[:, 4] - timeline[:, 2]
        collecting = landing_started - np.concatenate([[np.nan], timeline[:-1, 0]])
        for i in sorted(range(len(timeline)), key=lambda i: -timeline[i, 3])[:8]:
            done, messages, landing, worst, budgets = timeline[i]
            print(
                f"  shard {shard}: {done - started_wall:6.1f} | {messages:7,.0f} | "
                f"{collecting[i]:.3f} | {landing:.3f} | {budgets:.3f} | {worst / 1000:.2f}"
            )
    print("(every event counted, the first batch's ClickHouse warm-up included)")


if __name__ == "__main__":
    main()
