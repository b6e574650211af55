"""Landing throughput and memory: a pre-filled topic drained by one landing process.

    .venv/bin/python bench/bench_landing.py [--events 2000000] [--partitions 12]

Starts a throwaway broker, fills `events.raw` with realistic simulator events (each with a
unique event_id), then lands them with one `eventplatform land` process (one shard owning
every partition) into a fresh lake and embedded ClickHouse. Prints, from the same run:

- events/s landed (Kafka -> decode -> Parquet + ClickHouse -> commit), and the landing
  process's peak memory (max RSS);
- the raw rates of the parts on one core: the codec's decode (fastavro, one dict per event),
  building the Arrow table, and writing Parquet;
- the ratios, so a change shows where the time goes;
- landing with every enrichment on (the default) and with it off (``EP_ENRICH_ENABLED=false``:
  only the IP anonymisation runs), from the same topic by two consumer groups, in the order
  on, off, on, off ... (``--rounds``), and the cost per event of each enrichment measured in
  process over the same decoded batches (``eventplatform/enrich/``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import throwaway_broker

from eventplatform.events import EventCodec, EventValidator
from eventplatform.events.arrow import events_to_arrow
from eventplatform.kafka.clients import make_admin, make_producer
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.settings import REPO_ROOT
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

# `eventplatform land` in a child process that reports its own peak memory at exit.
MEASURED_LANDING = """
import resource, sys
from eventplatform.cli import main
sys.argv = ["eventplatform", "land", "--idle-stop", "2", "--quiet"]
try:
    main()
except SystemExit:
    pass
usage = resource.getrusage(resource.RUSAGE_SELF)
print("cpu_s", usage.ru_utime + usage.ru_stime)
print("maxrss_kib", usage.ru_maxrss)
"""
ID_AT = slice(11, 47)  # the event_id: first field, after the 10-byte header and its length byte


def encoded_pool(n: int) -> list[bytes]:
    """``n`` distinct realistic events, validated and encoded as the collector does."""
    generator = TrafficGenerator(TrafficSpec(seed=3, customers=20))
    validator, codec = EventValidator(), EventCodec()
    now = int(time.time() * 1000)
    pool = []
    for simulated in generator.events(n, now):
        datum, errors = validator.validate(simulated.event, simulated.customer_id, now)
        if not errors:
            pool.append(codec.encode(datum))
    assert all(len(m[ID_AT]) == 36 and m[10] == 72 for m in pool)  # 36-char id, zigzag 72
    return pool


def with_id(message: bytes, i: int) -> bytes:
    return message[:11] + f"bench-{i:030d}".encode() + message[47:]


def fill(bootstrap: str, topic: str, pool: list[bytes], total: int) -> float:
    producer = make_producer(
        bootstrap, **{"linger.ms": 20, "queue.buffering.max.messages": 500_000}
    )
    start = time.perf_counter()
    for i in range(total):
        message = with_id(pool[i % len(pool)], i)
        while True:
            try:
                producer.produce(topic, key=b"c%d" % (i % 20), value=message)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return total / (time.perf_counter() - start)


def part_rates(pool: list[bytes], n: int, tmp: Path) -> dict[str, float]:
    codec = EventCodec()
    messages = [with_id(pool[i % len(pool)], i) for i in range(n)]
    start = time.perf_counter()
    events = [codec.decode(m) for m in messages]
    decode = n / (time.perf_counter() - start)
    start = time.perf_counter()
    table = events_to_arrow(events, "events.raw", 0, list(range(n)), 0)
    arrow = n / (time.perf_counter() - start)
    start = time.perf_counter()
    pq.write_table(table, tmp / "bare.parquet", compression="zstd")
    parquet = n / (time.perf_counter() - start)
    return {"decode": decode, "arrow": arrow, "parquet": parquet}


def enrichment_costs(pool: list[bytes], batches: int = 6, n: int = 100_000) -> dict[str, float]:
    """Microseconds per event of each enrichment (the median batch after the first, whose
    user-agent cache is cold)."""
    from eventplatform.enrich import Enricher, Reference
    from eventplatform.events.arrow import with_kafka_columns
    from eventplatform.events.columnar import ColumnarDecoder

    messages = [with_id(pool[i % len(pool)], i) for i in range(n)]
    body, _ = ColumnarDecoder().decode(messages)
    table = with_kafka_columns(body, "events.raw", 0, list(range(n)), 0)
    enricher = Enricher(Reference())
    per_batch: list[dict[str, float]] = []
    for _ in range(batches):
        enricher.seconds.clear()
        enricher.enrich(table)
        per_batch.append({k: v / n * 1e6 for k, v in enricher.seconds.items()})
    names = per_batch[0].keys()
    return {k: statistics.median(b[k] for b in per_batch[1:]) for k in names}


def land_once(
    bootstrap: str, tmp: Path, group: str, enrich: bool
) -> tuple[float, float, float, str]:
    """events/s, peak MiB and CPU us per event (all threads, start-up included) of one
    landing process over the whole topic."""
    data_dir = Path(tempfile.mkdtemp(prefix="land-", dir=tmp))
    env = {
        **os.environ,
        "EP_DATA_DIR": str(data_dir),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EP_LAND_RAW_SHARDS": "1",
        "EP_LAND_GROUP_ID": group,
        "EP_ENRICH_ENABLED": "true" if enrich else "false",
    }
    landing = subprocess.run(
        [sys.executable, "-c", MEASURED_LANDING],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = landing.stdout.strip().splitlines()
    peak_mib = int(lines[-1].removeprefix("maxrss_kib ")) / 1024
    cpu_s = float(lines[-2].removeprefix("cpu_s "))
    stages = next(line for line in lines if line.startswith("time per stage"))
    summary = next(line for line in lines if line.startswith("landed "))
    active_s = float(summary.split("busy ")[1].split("s")[0])
    landed = int(summary.split("landed ")[1].split(" rows")[0])
    shutil.rmtree(data_dir, ignore_errors=True)
    return landed / active_s, peak_mib, cpu_s / landed * 1e6, f"{summary}\n{stages}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument(
        "--rounds", type=int, default=0, help="Land again with and without enrichment N times."
    )
    args = parser.parse_args()

    pool = encoded_pool(20_000)
    with throwaway_broker() as (bootstrap, tmp):
        topic = "events.raw"
        specs = [
            TopicSpec(topic, args.partitions, 1, {}),
            TopicSpec("events.dlq", 1, 1, {}),
        ]
        ensure_topics(make_admin(bootstrap), specs)
        produce_rate = fill(bootstrap, topic, pool, args.events)
        print(f"filled {args.events:,} events at {produce_rate:,.0f}/s")
        parts = part_rates(pool, 200_000, tmp)

        data_dir = Path(tempfile.mkdtemp(prefix="land-", dir=tmp))
        env = {
            **os.environ,
            "EP_DATA_DIR": str(data_dir),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EP_LAND_RAW_SHARDS": "1",
        }
        start = time.perf_counter()
        landing = subprocess.run(
            [sys.executable, "-c", MEASURED_LANDING],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
        lines = landing.stdout.strip().splitlines()
        peak_mib = int(lines[-1].removeprefix("maxrss_kib ")) / 1024
        stages = next(line for line in lines if line.startswith("time per stage"))
        summary = next(line for line in lines if line.startswith("landed "))
        active_s = float(summary.split("busy ")[1].split("s")[0])
        landed = int(summary.split("landed ")[1].split(" rows")[0])
        assert landed == args.events, landing.stdout
        rate = landed / active_s
        lake_bytes = sum(p.stat().st_size for p in (data_dir / "lake").rglob("*.parquet"))
        comparison: dict[str, list[tuple[float, float, float]]] = {}
        for i in range(args.rounds):
            for name, on in (("on", True), ("off", False)):
                r, peak, cpu, text = land_once(bootstrap, tmp, f"bench-{name}-{i}", on)
                print(f"round {i} enrichment {name}: {r:,.0f} events/s, {cpu:.2f} CPU us/event")
                print(text)
                comparison.setdefault(name, []).append((r, peak, cpu))
    costs = enrichment_costs(pool)

    print(f"landing process: {summary}")
    print(stages)
    print(f"wall {wall:.1f}s including start-up and {2}s idle stop")
    print()
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| events landed | {landed:,} |")
    print(f"| events/s landed (Kafka -> Parquet + ClickHouse -> commit) | {rate:,.0f} |")
    print(f"| peak memory of the landing process | {peak_mib:,.0f} MiB |")
    print(f"| lake size | {lake_bytes / 2**20:,.0f} MiB ({lake_bytes / landed:.0f} B/event) |")
    print(f"| raw decode, codec (fastavro), one core | {parts['decode']:,.0f}/s |")
    print(f"| raw Arrow build from decoded events | {parts['arrow']:,.0f}/s |")
    print(f"| raw Parquet write (zstd) | {parts['parquet']:,.0f}/s |")
    print(f"| ratio landed / raw decode | {rate / parts['decode']:.2f} |")
    print(f"| ratio landed / raw Parquet write | {rate / parts['parquet']:.2f} |")
    if comparison:
        cpu_on = statistics.median(c for *_, c in comparison["on"])
        cpu_off = statistics.median(c for *_, c in comparison["off"])
        print()
        print("| landing (median of rounds) | events/s | CPU us/event | peak MiB |")
        print("| --- | --- | --- | --- |")
        for name, runs in comparison.items():
            rates = ", ".join(f"{r:,.0f}" for r, *_ in runs)
            cpus = ", ".join(f"{c:.2f}" for *_, c in runs)
            peak = max(p for _, p, _ in runs)
            label = "every enrichment on" if name == "on" else "enrichment off (IP only)"
            median = statistics.median(r for r, *_ in runs)
            cpu = statistics.median(c for *_, c in runs)
            print(f"| {label} | {median:,.0f} ({rates}) | {cpu:.2f} ({cpus}) | {peak:,.0f} |")
        print(f"| CPU cost of enrichment | | {cpu_on - cpu_off:.2f} us/event | |")
    print()
    print("| enrichment, in process (CPU) | us/event |")
    print("| --- | --- |")
    for name, us in costs.items():
        print(f"| {name} | {us:.3f} |")
    print(f"| all | {sum(costs.values()):.3f} |")


if __name__ == "__main__":
    main()
