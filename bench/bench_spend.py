"""A budget refresh's cost with 1M and with 20M landed cost events behind it.

    .venv/bin/python bench/bench_spend.py [--sizes 1000000,20000000] [--runs 5]

For each size, a fresh embedded ClickHouse gets that many landed cost events (impressions of
20 customers naming 40 campaigns, half of them another customer's, over 30 days, 2 % of them
a second copy of an earlier event), inserted straight into ``events`` as the old landing left
them; then:

- the one-time backfill of the spend rollup from them (the upgrade path, ``ensure_backfilled``);
- the refresh's ClickHouse part, from the rollup: campaigns, spend, statuses
  (``read_campaigns`` + ``read_spend`` + ``campaign_states`` in one session, as
  ``BudgetController.refresh``; the signals' Kafka part is the same at any size), median of
  ``--runs``, including the embedded engine's open;
- the same with the old full recompute (``recompute_spend``) beside it (one run), and the
  time to open the embedded engine alone (a session with ``SELECT 1``), part of each figure;
- the landing's spend step for one batch of 1,000 cost events (half of them new, half copies
  of landed events): ``record_spend``, which a landing run does before its commit, in the
  session of its events insert (so without an engine open).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median

from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns, read_campaigns
from eventplatform.budgets.spend import campaign_states, read_spend, recompute_spend
from eventplatform.clickhouse import ClickHouse
from eventplatform.land.spend import ensure_backfilled, record_spend
from eventplatform.settings import REPO_ROOT

CUSTOMERS, CAMPAIGNS, DAYS = 20, 40, 30
HEADER = "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"


def fill(ch: ClickHouse, n: int, now: datetime) -> None:
    """n landed cost events (2 % of them a copy of an earlier one, landed later)."""
    db, start = ch.database, int(now.timestamp()) - DAYS * 86400
    rows = (
        f"SELECT toString(cityHash64(k)) AS event_id, 'impression' AS event_type, "
        f"fromUnixTimestamp64Milli(toInt64(({start} + k * {DAYS * 86400} / {n}) * 1000)) "
        "AS event_ts, event_ts AS received_ts, concat('c', toString(k % "
        f"{CUSTOMERS})) AS customer_id, 'bench' AS source, 1 AS schema_version, concat('cmp-', "
        f"toString(k % {CAMPAIGNS})) AS campaign_id, 0.001 * (1 + k % 7) AS cost, "
        "'events.raw' AS kafka_topic, toInt32(k % 4) AS kafka_partition, toInt64(k) AS "
        "kafka_offset, event_ts + toIntervalSecond(1 + copy * 60) AS landed_ts FROM ("
        f"SELECT if(number % 50 = 49, number - 25, number) AS k, number % 50 = 49 AS copy "
        f"FROM numbers({n}))"
    )
    columns = (
        "event_id, event_type, event_ts, received_ts, customer_id, source, schema_version, "
        "campaign_id, cost, kafka_topic, kafka_partition, kafka_offset, landed_ts"
    )
    with ch.session() as client:
        client.command(
            f"INSERT INTO {db}.events ({columns}) SETTINGS insert_deduplicate = 0, "
            f"max_partitions_per_insert_block = 1000 {rows}"
        )


def batch(n: int, now: datetime, landed: list[tuple[str, str]], tag: str) -> pa.Table:
    """A landed batch of n cost events: ``landed`` (copies of landed ones), then new ones."""
    ts = pa.array([now] * n, pa.timestamp("ms", tz="UTC"))
    fresh = n - len(landed)
    return pa.table(
        {
            "event_type": ["impression"] * n,
            "customer_id": [c for c, _ in landed] + [f"c{i % CUSTOMERS}" for i in range(fresh)],
            "event_id": [e for _, e in landed] + [f"new-{tag}-{i}" for i in range(fresh)],
            "campaign_id": [f"cmp-{i % CAMPAIGNS}" for i in range(n)],
            "cost": [0.001] * n,
            "event_ts": ts,
            "kafka_topic": ["events.raw"] * n,
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(n)),
        }
    )


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def measure(n: int, runs: int, now: datetime) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ep-bench-spend-") as tmp:
        ch = ClickHouse(f"chdb://{tmp}/ch", "bench_spend")
        ch.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
        rows = "".join(
            f"a,cmp-{k},1e9,1e9,USD,2026-01-01,2027-12-31,UTC,c{(k * 3) % CUSTOMERS}\n"
            for k in range(CAMPAIGNS)
        )
        load_campaigns(ch, parse_campaigns(HEADER + rows))
        started = time.perf_counter()
        fill(ch, n, now)
        filled = time.perf_counter() - started
        started = time.perf_counter()
        with ch.session() as client:  # as the first landing batch after an upgrade does
            ensure_backfilled(client, ch.database)
        backfill = time.perf_counter() - started

        def refresh(read=read_spend) -> None:  # as BudgetController.refresh: one session
            with ch.session():
                campaigns = read_campaigns(ch)
                spend = read(ch, now)
            campaign_states(campaigns, spend, now)

        def engine_open() -> None:
            with ch.session() as client:
                client.query("SELECT 1")

        opened = timed(engine_open, runs)
        rolled = timed(refresh, runs)
        with ch.lease():  # as the landing run's budget controller: the engine is open
            rolled_open = timed(refresh, runs)
        started = time.perf_counter()
        reference = recompute_spend(ch, now)  # once: it is the slow one
        full = time.perf_counter() - started
        drift = [
            cid
            for cid, s in read_spend(ch, now).items()
            if abs(s.total - reference[cid].total) > 1e-6 * max(1, s.total)
        ]
        assert not drift, f"rollup differs from the recompute: {drift}"
        with ch.session() as client:
            landed = client.query(
                f"SELECT customer_id, event_id FROM {ch.database}.events "
                "ORDER BY cityHash64(event_id) LIMIT 500"
            ).result_rows
        steps = []
        with ch.session() as client:  # the landing's session, already open for its insert
            for run in range(runs):
                table = batch(1000, now, landed, f"b{run}")
                started = time.perf_counter()
                record_spend(client, ch.database, table, f"b{run}")
                steps.append(time.perf_counter() - started)
        step = median(steps)
    return {
        "fill": filled,
        "backfill": backfill,
        "open": opened,
        "rollup": rolled,
        "rollup_open": rolled_open,
        "full": full,
        "step": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,20000000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    results = {}
    for n in (int(s) for s in args.sizes.split(",")):
        results[n] = r = measure(n, args.runs, now)
        print(
            f"{n:>11,} cost events: refresh {r['rollup_open'] * 1000:7.1f} ms (rollup, engine "
            f"open), {r['rollup'] * 1000:7.1f} ms (rollup, opening the engine: alone "
            f"{r['open'] * 1000:.1f} ms), "
            f"{r['full'] * 1000:8.1f} ms (full recompute); spend step of a 1,000-event batch "
            f"{r['step'] * 1000:6.1f} ms; backfill once {r['backfill']:6.1f} s "
            f"(fill {r['fill']:.0f} s)",
            flush=True,
        )
    sizes = sorted(results)
    if len(sizes) > 1:
        small, big = results[sizes[0]], results[sizes[-1]]
        print(
            f"{sizes[-1]:,} vs {sizes[0]:,}: "
            f"refresh x{big['rollup_open'] / small['rollup_open']:.2f} "
            f"(rollup, engine open), x{big['rollup'] / small['rollup']:.2f} (rollup, with the "
            f"engine's open), x{big['open'] / small['open']:.2f} (the open alone), "
            f"x{big['full'] / small['full']:.2f} (full recompute); "
            f"spend step x{big['step'] / small['step']:.2f}"
        )


if __name__ == "__main__":
    main()
