"""How the platform scales with processes on this machine: landing with 1, 2 and 4 shards,
the collector with 1 and 2 workers, each with its CPU per event.

    .venv/bin/python bench/bench_scaling.py [--events 1000000] [--shards 1 2 4]
        [--workers 1 2] [--runs 2] [--collector-runs 3]

Landing: one throwaway broker, `events.raw` (12 partitions) filled once with realistic
simulator events (unique ids); then for each shard count N, alternated run by run, N
`eventplatform land` shard processes (partition % N, as the sensors start them) drain it
into a fresh lake and embedded ClickHouse under a consumer group of their own. Events/s is
all the events over the span from the first shard's start to the last one's last batch;
CPU per event is the shard processes' CPU (every thread, from getrusage) over the events.

Collector: `bench/bench_collector.py --workers N` for each N (its own broker and wrk), its
medians: events/s accepted and the collector's CPU per event.

The machine is shared: compare the columns of one run, not with figures of another day.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_landing import encoded_pool, fill
from common import median, throwaway_broker

from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.settings import REPO_ROOT

# One shard's landing in a child process: when it started landing, when its last batch
# ended, its rows and its CPU (all threads) over that time.
SHARD = """
import json, resource, sys, time
from eventplatform.land.sources import build_lander
from eventplatform.settings import get_settings

settings = get_settings()
settings.land.idle_stop_s = 2.0
lander = build_lander(settings, "raw", int(sys.argv[1]))
last = [time.time()]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
cpu_start, start = cpu(), time.time()
marks = []
def on_batch(report):
    last[0] = time.time()
    marks.append(cpu())
summary = lander.run(on_batch=on_batch, log=lambda line: None)
print(json.dumps({"rows": summary.rows, "start": start, "end": last[0],
                  "cpu_s": (marks[-1] if marks else cpu()) - cpu_start}))
"""


def land(bootstrap: str, tmp: Path, shards: int, tag: str) -> dict[str, float]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"land-{shards}-", dir=tmp))
    env = {
        **os.environ,
        "EP_DATA_DIR": str(data_dir),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EP_LAND_RAW_SHARDS": str(shards),
        "EP_LAND_GROUP_ID": f"scaling-{tag}",
        "EP_LAND_MAX_OPENS_EMBEDDED": "0",  # one run per shard, as bench_latency does
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SHARD, str(shard)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for shard in range(shards)
    ]
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=1800)
        assert child.returncode == 0, out
        reports.append(json.loads(out.strip().splitlines()[-1]))
    rows = sum(r["rows"] for r in reports)
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cpu = sum(r["cpu_s"] for r in reports)
    return {"rows": rows, "rate": rows / span, "cpu_us": cpu * 1e6 / rows}


def collector(workers: int, runs: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "bench/bench_collector.py",
            "--runs",
            str(runs),
            "--workers",
            str(workers),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"events/s accepted \(median\):\s+([\d,]+)", out)
    cpu = re.search(r"collector CPU per event \(median\):\s+([\d.]+) us", out)
    p99 = re.search(r"p50 / p99 \(median\): ([\d.]+) ms / ([\d.]+) ms", out)
    assert rate and cpu and p99, out
    return {
        "rate": float(rate.group(1).replace(",", "")),
        "cpu_us": float(cpu.group(1)),
        "p99_ms": float(p99.group(2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=2, help="landing runs per shard count")
    parser.add_argument("--collector-runs", type=int, default=3)
    parser.add_argument("--skip-landing", action="store_true")
    parser.add_argument("--skip-collector", action="store_true")
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} (2 cores, shared)", flush=True)

    landing: dict[int, list[dict[str, float]]] = {n: [] for n in args.shards}
    if not args.skip_landing:
        pool = encoded_pool(20_000)
        with throwaway_broker() as (bootstrap, tmp):
            specs = [TopicSpec("events.raw", 12, 1, {}), TopicSpec("events.dlq", 1, 1, {})]
            ensure_topics(make_admin(bootstrap), specs)
            rate = fill(bootstrap, "events.raw", pool, args.events)
            print(f"filled {args.events:,} events at {rate:,.0f}/s", flush=True)
            for run in range(args.runs):
                for shards in args.shards:  # alternated: each run sees every shard count
                    figures = land(bootstrap, tmp, shards, f"{shards}-{run}")
                    assert figures["rows"] == args.events, figures
                    landing[shards].append(figures)
                    print(
                        f"landing, {shards} shard(s), run {run + 1}: {figures['rate']:,.0f} "
                        f"events/s, {figures['cpu_us']:.1f} us CPU per event "
                        f"(load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    collecting: dict[int, dict[str, float]] = {}
    if not args.skip_collector:
        for workers in args.workers:
            collecting[workers] = collector(workers, args.collector_runs)
            c = collecting[workers]
            print(
                f"collector, {workers} worker(s): {c['rate']:,.0f} events/s, p99 {c['p99_ms']:.1f}"
                f" ms, {c['cpu_us']:.1f} us CPU per event (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )

    print("\n| processes | events/s (median) | vs 1 | CPU per event (median) |")
    print("| --- | --- | --- | --- |")
    base = None
    for shards, runs in landing.items():
        if not runs:
            continue
        rate = median([r["rate"] for r in runs])
        base = base or rate
        cpu = median([r["cpu_us"] for r in runs])
        print(f"| landing, {shards} shard(s) | {rate:,.0f} | {rate / base:.2f} | {cpu:.1f} us |")
    base = None
    for workers, c in collecting.items():
        base = base or c["rate"]
        print(
            f"| collector, {workers} worker(s) | {c['rate']:,.0f} | {c['rate'] / base:.2f} | "
            f"{c['cpu_us']:.1f} us (p99 {c['p99_ms']:.1f} ms) |"
        )
    end = time.strftime("%H:%M UTC", time.gmtime())
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}; {end}")


if __name__ == "__main__":
    main()
