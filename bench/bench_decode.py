"""Decoding a batch of Kafka messages into the landed columns: codec + Arrow vs columnar.

    .venv/bin/python bench/bench_decode.py [--events 200000] [--runs 3] [--v1-every 0]

Makes realistic encoded events (the simulator's traffic, validated and encoded as the
collector does; each with a unique event_id), then times on one core, median of ``--runs``:

(a) ``[codec.decode(v) for v in values]`` + ``events_to_arrow`` (fastavro, one dict per event,
    then pyarrow ``from_pylist``): what the landing job does today;
(b) ``ColumnarDecoder.decode(values)`` (native, no Python object per event);

and checks once that both give the same body columns. Rates are given per CPU second of the
process (steady on a shared machine) and per wall-clock second. ``--v1-every N`` writes every N-th
event with the v1 schema (read into the v2 columns).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median

from eventplatform.events import EventCodec, EventValidator
from eventplatform.events.arrow import _body_schema, events_to_arrow
from eventplatform.events.columnar import ColumnarDecoder
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

ID_AT = slice(11, 47)  # the event_id: first field, after the 10-byte header and its length byte


def encoded_pool(n: int, v1_every: int = 0) -> list[bytes]:
    """``n`` distinct realistic events, validated and encoded as the collector does."""
    generator = TrafficGenerator(TrafficSpec(seed=3, customers=20))
    validator, codec, v1 = EventValidator(), EventCodec(), EventCodec(writer_version=1)
    now = int(time.time() * 1000)
    pool = []
    for simulated in generator.events(n, now):
        datum, errors = validator.validate(simulated.event, simulated.customer_id, now)
        if errors:
            continue
        if v1_every and len(pool) % v1_every == 0:
            datum = {k: v for k, v in datum.items() if k != "device"}
            datum["payload"] = {k: v for k, v in datum["payload"].items() if k != "duration_ms"}
            pool.append(v1.encode(datum))
        else:
            pool.append(codec.encode(datum))
    assert all(len(m[ID_AT]) == 36 and m[10] == 72 for m in pool)  # 36-char id, zigzag 72
    return pool


def with_id(message: bytes, i: int) -> bytes:
    return message[:11] + f"bench-{i:030d}".encode() + message[47:]


def codec_and_arrow(codec: EventCodec, values: list[bytes]):
    events = [codec.decode(v) for v in values]
    return events_to_arrow(events, "events.raw", 0, list(range(len(events))), 0)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--v1-every", type=int, default=0)
    args = parser.parse_args()

    pool = encoded_pool(min(args.events, 20_000), args.v1_every)
    values = [with_id(pool[i % len(pool)], i) for i in range(args.events)]
    codec, columnar = EventCodec(), ColumnarDecoder()

    reference = codec_and_arrow(codec, values).select(_body_schema().names)
    table, errors = columnar.decode(values)
    assert errors == [] and table.equals(reference), "the two paths disagree"
    del reference, table

    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for _ in range(args.runs):
        runs["a"].append(timed(codec_and_arrow, codec, values))
        runs["b"].append(timed(columnar.decode, values))
    n = args.events
    wall = {k: median([n / w for w, _ in v]) for k, v in runs.items()}
    cpu = {k: median([n / c for _, c in v]) for k, v in runs.items()}
    mib = sum(map(len, values)) / 2**20

    print(f"{n:,} events ({mib:,.0f} MiB encoded), one thread, median of {args.runs} runs")
    print("(events/s per CPU second of the process, and per wall-clock second)")
    print()
    print("| path | events/s (CPU) | events/s (wall) |")
    print("| --- | --- | --- |")
    print(f"| (a) codec.decode + events_to_arrow | {cpu['a']:,.0f} | {wall['a']:,.0f} |")
    print(f"| (b) ColumnarDecoder.decode | {cpu['b']:,.0f} | {wall['b']:,.0f} |")
    print(f"| ratio (b) / (a) | {cpu['b'] / cpu['a']:.1f}x | {wall['b'] / wall['a']:.1f}x |")


if __name__ == "__main__":
    main()
