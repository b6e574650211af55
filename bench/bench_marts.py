"""Build time of one day's marts against DuckDB's bare scan of the same Parquet files.

    .venv/bin/python bench/bench_marts.py [--events 10000000] [--runs 3]
        [--no-clickhouse] [--history 7,90] [--history-events 1000000] [--sessions visits]
        [--compare-sql-sessions]

Generates one day of landed events straight into a throwaway lake with pyarrow/numpy (the
landed schema, one file per hour as the landing job writes them, 1 % duplicated event ids,
a realistic mix of ad and product events, in visits of a user of a customer: 8 events a visit
on average, product visits with a session_id, ad visits without, as the simulator sends them;
``--sessions uniform`` draws each event's user and session on its own instead, as before
2026-12-07), then, in the same run:

- the bare scan: DuckDB reads every column of every file (``count(col)`` for each column,
  so each is decoded);
- the build: all marts for the day (dedupe, six marts, reconciliation, Parquet export,
  warehouse load, and the ClickHouse mirror unless ``--no-clickhouse``);
- ``--runs`` times a bare scan, then a build right after it: the ratio is the median of the
  runs' build CPU / scan CPU. This machine's speed drifts by a third within an hour (other
  tenants of the host), so a scan and a build measured minutes apart can be compared only
  in pairs; the medians of the scans and builds are printed too;
- the same build with N days of history behind it, for each N of ``--history``: past days
  are written straight into the lake (``--history-events`` page views a day from the same
  customers and users, so each day's user set is like the big day's), and built in order
  (their user sets and activity states only: what a later day's marts read), then the day
  is built again, ``--runs`` times. Flat means the day's build costs the same with 7 or 90
  days behind it.

Prints the figures and the ratio build / scan, in wall time and in CPU time (the machine may
be shared: CPU time moves less with other load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DAY = date(2026, 11, 23)
TYPES = ["page_view", "click", "signup", "purchase", "impression", "ad_click", "conversion", "bid"]
WEIGHTS = [0.28, 0.14, 0.02, 0.01, 0.42, 0.06, 0.01, 0.06]
AD = {"impression", "ad_click", "conversion", "bid"}


def _pool(prefix: str, n: int) -> pa.Array:
    return pa.array([f"{prefix}{i}" for i in range(n)], pa.string())


PRODUCT_TYPES = [t for t in TYPES if t not in AD]
AD_TYPES = [t for t in TYPES if t in AD]
VISIT_EVENTS = 8  # mean events of a visit
VISIT_GAP_S = 60  # mean seconds between a visit's events


def _visits(rng: np.random.Generator, events: int, customer_p: np.ndarray) -> dict[str, np.ndarray]:
    """Per event: its visit, customer, user, type and time. A visit is one user of one customer
    for a few minutes (``VISIT_EVENTS`` events on average, ``VISIT_GAP_S`` s apart), started
    anywhere in the day; product visits carry a session_id, ad visits (a viewer's impressions,
    clicks, bids) only the viewer's user_id, as the traffic simulator sends them."""
    lengths = rng.geometric(1 / VISIT_EVENTS, max(events // VISIT_EVENTS * 2, 1))
    count = int(np.searchsorted(np.cumsum(lengths), events)) + 1
    lengths = lengths[:count]
    lengths[-1] -= int(lengths.sum()) - events
    visit = np.repeat(np.arange(count), lengths)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    product_share = sum(w for t, w in zip(TYPES, WEIGHTS, strict=True) if t not in AD)
    is_product_visit = rng.random(count) < product_share
    product_w = np.array([WEIGHTS[TYPES.index(t)] for t in PRODUCT_TYPES])
    ad_w = np.array([WEIGHTS[TYPES.index(t)] for t in AD_TYPES])
    product_type = np.array([TYPES.index(t) for t in PRODUCT_TYPES])[
        rng.choice(len(PRODUCT_TYPES), events, p=product_w / product_w.sum())
    ]
    ad_type = np.array([TYPES.index(t) for t in AD_TYPES])[
        rng.choice(len(AD_TYPES), events, p=ad_w / ad_w.sum())
    ]
    gaps = rng.exponential(VISIT_GAP_S * 1000, events).astype(np.int64)
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[first][visit]
    start = rng.integers(0, 86_400_000, count)
    return {
        "visit": visit,
        "customer": rng.choice(20, count, p=customer_p)[visit],
        "user": rng.integers(0, 500_000, count)[visit],
        "product": is_product_visit[visit],
        "type": np.where(is_product_visit[visit], product_type, ad_type),
        "offset_ms": np.minimum(start[visit] + elapsed, 86_400_000 - 1),
    }


_AGENTS = [
    f"Mozilla/5.0 ({os_}) AppleWebKit/537.36 (KHTML, like Gecko) {browser}/{major}.0 Safari/537.36"
    for os_ in (
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 10_15_7",
        "Linux; Android 14; Pixel 8",
        "iPhone; CPU iPhone OS 17_5 like Mac OS X",
    )
    for browser in ("Chrome", "Edg", "Firefox")
    for major in (120, 121, 122, 123)
]
_COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "AU", "ES", "IT", "NL", "MX", "PL"]


def _enriched(user: np.ndarray, visit: np.ndarray, product: np.ndarray) -> dict:
    """The columns the landing job's enrichment and the SDK add: a user keeps one IP, agent
    and country; a visit one referrer and, for a third of product visits, UTM parameters on
    its URL. One user in 200 is a bot (left out of every mart but usage)."""
    agents = pa.array(_AGENTS)
    agent = user % len(_AGENTS)
    ip = pc.binary_join_element_wise(
        "10.",
        pc.cast(pa.array((user >> 8) % 256), pa.string()),
        ".",
        pc.cast(pa.array(user % 256), pa.string()),
        ".1",
        "",
    )
    referrer_class = pa.array(["search", "social", "direct", "email", "paid"]).take(
        pa.array(visit % 5)
    )
    utm = product & (visit % 3 == 0)
    return {
        "ip": ip,
        "user_agent": agents.take(pa.array(agent)),
        "ua_browser": pa.array(["Chrome", "Edge", "Firefox"]).take(pa.array(agent // 4 % 3)),
        "ua_os": pa.array(["Windows", "Mac OS X", "Android", "iOS"]).take(pa.array(agent // 12)),
        "device_class": pa.array(["desktop", "desktop", "mobile", "mobile"]).take(
            pa.array(agent // 12)
        ),
        "is_bot": pa.array(user % 200 == 0),
        "geo_country": pa.array(_COUNTRIES).take(pa.array(user % len(_COUNTRIES))),
        "ip_mode": pa.array(["truncate"] * len(user)),
        "referrer": pc.if_else(
            pa.array(product), pa.array(["https://www.google.com/"] * len(user)), None
        ),
        "referrer_class": pc.if_else(pa.array(product), referrer_class, None),
        "utm_source": pc.if_else(pa.array(utm), pa.array(["newsletter"] * len(user)), None),
        "utm_medium": pc.if_else(pa.array(utm), pa.array(["email"] * len(user)), None),
        "enrich_version": pa.array(["1"] * len(user)),
    }


def generate(lake: Path, events: int, seed: int = 7, sessions: str = "visits") -> tuple[int, int]:
    """One day of landed events, one file per hour; returns (rows, bytes on disk).

    ``sessions="visits"``: events come in visits (see :func:`_visits`). ``"uniform"``: every
    event draws its user and session_id on its own (the generator before 2026-12-07: 10M
    events make 7.5M one-event "sessions", the sessions mart nearly as long as the day)."""
    from eventplatform.events.arrow import landed_schema, with_event_bytes

    schema = landed_schema()
    rng = np.random.default_rng(seed)
    customers = _pool("cust-", 20)
    customer_p = 1 / np.arange(1, 21) ** 1.1
    customer_p /= customer_p.sum()
    users, sessions_pool, campaigns = (
        _pool("u-", 500_000),
        _pool("s-", 2_000_000),
        _pool("cmp-", 200),
    )
    sites, publishers = _pool("site-", 300), _pool("pub-", 60)
    devices = pa.array(["desktop", "mobile", "tablet", "ctv"])
    urls = _pool("https://shop.example/p/", 5000)
    type_ids = pa.array(TYPES)
    day_ms = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    if sessions == "visits":
        drawn = _visits(rng, events, customer_p)
        order = np.argsort(drawn["offset_ms"] // 3_600_000, kind="stable")
        drawn = {k: v[order] for k, v in drawn.items()}
        per_hour = np.bincount(drawn["offset_ms"] // 3_600_000, minlength=24)
    else:
        per_hour = np.full(24, events // 24)
        per_hour[: events % 24] += 1
    written = size = 0
    offset = 0
    for hour, n in enumerate(per_hour):
        n = int(n)
        if sessions == "visits":
            here = slice(offset, offset + n)
            types, customer = drawn["type"][here], drawn["customer"][here]
            event_ts = day_ms + drawn["offset_ms"][here]
            user_index, visit = drawn["user"][here], drawn["visit"][here]
            visit_ids = pc.binary_join_element_wise("s-", pc.cast(pa.array(visit), pa.string()), "")
            session = pc.if_else(pa.array(drawn["product"][here]), visit_ids, None)
        else:
            types = rng.choice(len(TYPES), n, p=WEIGHTS)
            event_ts = day_ms + hour * 3_600_000 + rng.integers(0, 3_600_000, n)
            customer = rng.choice(20, n, p=customer_p)
            user_index = rng.integers(0, 500_000, n)
            visit = np.arange(offset, offset + n)
            session = sessions_pool.take(pa.array(rng.integers(0, 2_000_000, n)))
        user = users.take(pa.array(user_index))
        is_ad = np.isin(types, [TYPES.index(t) for t in AD])
        is_product = ~is_ad
        ids = np.arange(offset, offset + n)
        dup = rng.random(n) < 0.01  # 1 % of rows repeat an earlier event of the hour
        ids[dup] = offset + (rng.random(dup.sum()) * (np.arange(n)[dup] + 1)).astype(np.int64)
        campaign = rng.integers(0, 10, n)
        site = (customer * 15 + rng.integers(0, 30, n)) % 300
        cost = np.where(types == 4, 0.0025, np.where(types == 5, 0.4, 5.0))
        columns = {
            "event_id": pc.binary_join_element_wise("ev-", pc.cast(pa.array(ids), pa.string()), ""),
            "event_type": type_ids.take(pa.array(types)),
            "event_ts": pa.array(event_ts, pa.timestamp("ms", tz="UTC")),
            "received_ts": pa.array(event_ts + 50, pa.timestamp("ms", tz="UTC")),
            "customer_id": customers.take(pa.array(customer)),
            "source": pa.array(["web-sdk"] * n),
            "schema_version": pa.array(np.full(n, 2, np.int32)),
            "user_id": user,
            "session_id": session,
            "device": devices.take(pa.array(rng.integers(0, 4, n))),
            "url": urls.take(pa.array(rng.integers(0, 5000, n), mask=~(types <= 1))),
            # each customer runs its 10 campaigns on 30 of the 300 sites; 5 sites per publisher
            "campaign_id": campaigns.take(pa.array(customer * 10 + campaign, mask=is_product)),
            "site_id": sites.take(pa.array(site, mask=is_product)),
            "publisher_id": publishers.take(pa.array(site // 5, mask=is_product)),
            "pricing_model": pa.array(np.where(types == 4, "CPM", "CPC"), mask=~is_ad),
            "cost": pa.array(cost, mask=~(is_ad & (types != 7))),
            "revenue": pa.array(cost * 0.7, mask=~(is_ad & (types != 7))),
            "value": pa.array(np.full(n, 80.0), mask=types != 6),
            "amount": pa.array(np.full(n, 59.9), mask=types != 3),
            "currency": pa.array(np.where(is_ad, "USD", "EUR"), mask=~(is_ad | (types == 3))),
            "bid_price": pa.array(np.full(n, 2.5), mask=types != 7),
            "kafka_topic": pa.array(["events.raw"] * n),
            "kafka_partition": pa.array(np.full(n, hour % 12, np.int32)),
            "kafka_offset": pa.array(np.arange(offset, offset + n)),
            "landed_ts": pa.array(event_ts + 2000, pa.timestamp("ms", tz="UTC")),
            **_enriched(user_index, visit, is_product),
        }
        table = pa.table(
            {
                f.name: columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                for f in schema
            },
            schema=schema,
        )
        table = with_event_bytes(table)  # as the lander sets it
        folder = lake / "events" / f"event_date={DAY}" / f"event_hour={hour:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"events.raw+{hour % 12}+{offset}-{offset + n - 1}.parquet"
        pq.write_table(table, path, compression="zstd")
        written += n
        size += path.stat().st_size
        offset += n
    return written, size


def generate_history_day(lake: Path, day: date, events: int, seed: int) -> None:
    """A past day of page views from the same 20 customers and 500,000 users per customer as
    the big day (one file): cheap to write, and its user set is as large as a real day's."""
    from eventplatform.events.arrow import landed_schema, with_event_bytes

    schema = landed_schema()
    rng = np.random.default_rng(seed)
    customer_p = 1 / np.arange(1, 21) ** 1.1
    customer_p /= customer_p.sum()
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    ts = pa.array(day_ms + rng.integers(0, 86_400_000, events), pa.timestamp("ms", tz="UTC"))
    ids = pa.array(np.arange(events))
    columns = {
        "event_id": pc.binary_join_element_wise(f"h{seed}-", pc.cast(ids, pa.string()), ""),
        "event_type": pa.array(["page_view"] * events),
        "event_ts": ts,
        "received_ts": ts,
        "customer_id": _pool("cust-", 20).take(pa.array(rng.choice(20, events, p=customer_p))),
        "source": pa.array(["web-sdk"] * events),
        "schema_version": pa.array(np.full(events, 2, np.int32)),
        "user_id": _pool("u-", 500_000).take(pa.array(rng.integers(0, 500_000, events))),
        "kafka_topic": pa.array(["events.raw"] * events),
        "kafka_partition": pa.array(np.zeros(events, np.int32)),
        "kafka_offset": ids,
        "landed_ts": ts,
    }
    table = pa.table(
        {
            f.name: columns[f.name].cast(f.type) if f.name in columns else pa.nulls(events, f.type)
            for f in schema
        },
        schema=schema,
    )
    table = with_event_bytes(table)
    folder = lake / "events" / f"event_date={day}" / "event_hour=00"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"events.raw+0+0-{events - 1}.parquet", compression="zstd")


def timed_builds(builder, runs: int, files: list[str]) -> dict:
    """``runs`` times a bare scan, then a build of the day right after it: the medians of the
    scans' and builds' wall and CPU seconds, the median of the runs' CPU ratios, and the last
    build's parts."""
    scans, builds, ratios = [], [], []
    for _ in range(runs):
        scans.append(bare_scan(files))
        start, cpu = time.perf_counter(), time.process_time()
        parts = builder.build_day(DAY)
        builds.append((time.perf_counter() - start, time.process_time() - cpu))
        assert all(p.reconciled for p in parts), "a mart did not reconcile"
        ratios.append(builds[-1][1] / scans[-1][1])
    return {
        "scan": statistics.median(w for w, _ in scans),
        "scan_cpu": statistics.median(c for _, c in scans),
        "build": statistics.median(w for w, _ in builds),
        "build_cpu": statistics.median(c for _, c in builds),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "parts": parts,
    }


def bare_scan(files: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of DuckDB reading every column."""
    from eventplatform.events.arrow import landed_schema

    counts = ", ".join(f'count("{f.name}")' for f in landed_schema())
    con = duckdb.connect()
    start, cpu = time.perf_counter(), time.process_time()
    con.execute(f"SELECT {counts} FROM read_parquet($f)", {"f": files}).fetchall()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    con.close()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-clickhouse", action="store_true")
    parser.add_argument("--history", default="7,90", help="days of history, comma separated")
    parser.add_argument("--history-events", type=int, default=1_000_000)
    parser.add_argument(
        "--sessions",
        choices=["visits", "uniform"],
        default="visits",
        help="how the day's events fall into visits (see generate())",
    )
    parser.add_argument(
        "--compare-sql-sessions",
        action="store_true",
        help="also build the day with sessions_daily native and by its SQL "
        "(EP_MARTS_NATIVE_SESSIONS=false), interleaved, and print both build CPU medians",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ep-bench-marts-") as tmp:
        os.environ["EP_DATA_DIR"] = tmp
        from eventplatform.clickhouse import ClickHouse
        from eventplatform.marts.build import MartBuilder
        from eventplatform.settings import get_settings

        settings = get_settings()
        start = time.perf_counter()
        rows, size = generate(settings.lake_dir, args.events, sessions=args.sessions)
        generated = time.perf_counter() - start
        print(
            f"generated {rows:,} events ({size / 1e6:.0f} MB Parquet, 24 files, sessions "
            f"{args.sessions}) in {generated:.1f}s"
        )
        # the day's files, listed before any history day or mart export is written
        files = sorted(str(p) for p in settings.lake_dir.rglob("*.parquet"))

        clickhouse = None
        if not args.no_clickhouse:
            clickhouse = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
            clickhouse.apply_ddl(settings.paths.sql_dir / "clickhouse")
        builder = MartBuilder(settings, clickhouse=clickhouse)
        bare_scan(files)  # warm: the files' pages in the OS cache, as for every later scan
        runs = timed_builds(builder, args.runs, files)
        for part in runs["parts"]:
            print(f"  {part.mart}: {part.rows:,} rows, query+reconcile {part.seconds:.2f}s")
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in builder.timings.items())
        print(
            f"bare scan (all columns), median of {args.runs}: {runs['scan']:.2f}s wall, "
            f"{runs['scan_cpu']:.2f}s CPU"
        )
        print(
            f"build of the day's {len(runs['parts'])} marts (all reconciled), median of "
            f"{args.runs}: {runs['build']:.2f}s wall, {runs['build_cpu']:.2f}s CPU "
            f"(last: {stages})"
        )
        print(f"events/s through the marts build: {rows / runs['build']:,.0f}")
        print(
            f"ratio build / bare scan, CPU, each build against the scan just before it: "
            f"median {runs['ratio']:.1f} (runs: {[round(r, 1) for r in runs['ratios']]}); "
            f"wall, medians: {runs['build'] / runs['scan']:.1f}"
        )
        sys.stdout.flush()
        if args.compare_sql_sessions:  # interleaved, so that both see the same machine
            cpu: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.runs):
                for native in (True, False):
                    settings.marts.native_sessions = native
                    cpu[native].append(timed_builds(builder, 1, files)["build_cpu"])
            settings.marts.native_sessions = True
            native_cpu, sql_cpu = (statistics.median(cpu[n]) for n in (True, False))
            print(
                f"sessions_daily native against its SQL, {args.runs} interleaved builds each: "
                f"build CPU medians {native_cpu:.2f}s against {sql_cpu:.2f}s "
                f"({native_cpu / sql_cpu:.2f}x; native {[round(c, 1) for c in cpu[True]]}, "
                f"SQL {[round(c, 1) for c in cpu[False]]})"
            )
            sys.stdout.flush()

        with_history: dict[int, float] = {}
        written = 0
        for days in sorted(int(d) for d in args.history.split(",") if d):
            start = time.perf_counter()
            past = [date.fromordinal(DAY.toordinal() - n) for n in range(days, 0, -1)]
            for n, day in enumerate(past):
                if n < days - written:  # the days not written for a shorter history
                    generate_history_day(
                        settings.lake_dir, day, args.history_events, seed=day.toordinal()
                    )
            for day in past:  # in order: each day's state chains on the day before
                builder.build_day(day, ["daily_users", "user_activity"])
            prepared = time.perf_counter() - start
            written = days
            hist = timed_builds(builder, args.runs, files)
            source = builder.activity.source if builder.activity else "?"
            states = [p for p in builder.state_parts if p.mart == "user_activity"]
            users = states[0].rows if states else 0
            with_history[days] = hist["ratio"]
            print(
                f"with {days} days of history ({args.history_events:,} events a day, written "
                f"and built in {prepared:.0f}s): build median {hist['build']:.2f}s wall, "
                f"{hist['build_cpu']:.2f}s CPU, ratio to the scan before it {hist['ratio']:.1f} "
                f"(runs: {[round(r, 1) for r in hist['ratios']]}); state {source}, {users:,} "
                "users in the window"
            )
            sys.stdout.flush()
        if len(with_history) > 1:
            low, high = min(with_history), max(with_history)
            print(
                f"build CPU with {high} vs {low} days of history (as ratios to the bare scan): "
                f"{with_history[high] / with_history[low]:.2f}x"
            )


if __name__ == "__main__":
    main()
