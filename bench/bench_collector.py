"""Collector throughput over HTTP beside the raw confluent-kafka produce rate, in one run.

    .venv/bin/python bench/bench_collector.py [--runs 3] [--seconds 10] [--batch 100]
        [--connections 8] [--workers 1] [--client auto|wrk|python] [--rate EVENTS_PER_S]

Starts a throwaway broker and `eventplatform collect` on loopback. Each run measures, on the
same broker and the same machine, one after the other:

- raw produce: confluent-kafka alone producing the collector's Avro bytes of the same events
  (same producer settings, no HTTP, no validation) to a separate topic, flush included;
- intake: the collector's own pipeline in this process without HTTP (the native fast path
  parsing, validating and encoding the JSON batch, produce with delivery callbacks), flush
  included; and the same with every event through the Python validator and codec (the
  reference path, ``EP_COLLECTOR_NATIVE_INTAKE=false``);
- HTTP: a load client keeping ``--connections`` keep-alive connections busy with POSTs of
  ``--batch`` valid mixed events for ``--seconds``; events/s accepted (202) and the request
  latency percentiles.

The load client is `wrk` (C, Debian package `wrk`) when it is installed, else a small asyncio
client in this process; either way it runs on the same cores as the collector and the broker,
the Python one costs noticeably more of them. That measures the most the collector takes
(closed loop). With ``--rate`` the Python client offers a fixed load instead (open loop) and
the latency is that of a collector at that load, not of one saturated.

Beside the rates: the CPU the collector used per event accepted, and the share of the run its
event loop was ready to run but had no CPU (other processes on the same cores): on a shared
machine these say more than the rate alone. At the end every event the collector answered
202 for is checked to be in events.raw (the collector flushes on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from confluent_kafka import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, throwaway_broker

from eventplatform.collect.customers import CustomerStore
from eventplatform.collect.intake import Intake, producer_limits
from eventplatform.collect.metrics import Metrics
from eventplatform.collect.quotas import Quotas
from eventplatform.events import EventCodec, EventValidator
from eventplatform.kafka.broker import free_port
from eventplatform.kafka.clients import make_admin, make_consumer, make_producer
from eventplatform.kafka.topics import TopicSpec, ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

RAW_BENCH_TOPIC = "bench.raw-produce"
UNLIMITED = {
    "EP_COLLECTOR_RATE_PER_S": "1e9",
    "EP_COLLECTOR_BURST": "1e9",
    "EP_COLLECTOR_HARD_CAP_PER_S": "1e9",
    "EP_COLLECTOR_HARD_CAP_BURST": "1e9",
}


@dataclass
class HttpRun:
    seconds: float
    requests: int  # answered 202
    failed: int  # any other answer or a socket error
    p50_ms: float
    p99_ms: float
    batch: int
    cpu_s: float = 0.0  # CPU time the collector's processes used meanwhile
    loop_wait: float = 0.0  # share of the run the event loop was runnable but off CPU

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s * 1e6 / max(1, self.requests * self.batch)

    @property
    def events_per_s(self) -> float:
        return self.requests * self.batch / self.seconds


# --- the raw producer and the in-process intake -------------------------------------------


BENCH_BUFFER_MESSAGES, BENCH_BUFFER_BYTES = 990_000, 2**30


def collector_producer(bootstrap: str, settings: Settings):
    """A producer configured as the collector's (buffer larger: the rate is the point)."""
    return make_producer(
        bootstrap,
        **producer_limits(BENCH_BUFFER_MESSAGES, BENCH_BUFFER_BYTES),
        **{"linger.ms": settings.collector.producer_linger_ms},
    )


def raw_produce_rate(bootstrap: str, settings: Settings, values: list[bytes], total: int) -> float:
    """confluent-kafka alone: ``total`` messages (``values`` cycled), flush included."""
    producer = collector_producer(bootstrap, settings)
    key = b"bench"
    producer.produce(RAW_BENCH_TOPIC, key=key, value=values[0])  # connected, idempotence set up
    producer.flush(30)
    start = time.perf_counter()
    for i in range(total):
        value = values[i % len(values)]
        while True:
            try:
                producer.produce(RAW_BENCH_TOPIC, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    return total / (time.perf_counter() - start)


def intake_rate(
    bootstrap: str, settings: Settings, body: bytes, requests: int, native: bool = True
) -> float:
    """The collector's pipeline without HTTP: read (the native fast path, or with
    ``native=False`` the Python validator and codec for every event), produce; flush."""
    k = settings.kafka
    producer = collector_producer(bootstrap, settings)
    unlimited = float("inf")
    intake = Intake(
        producer,
        RAW_BENCH_TOPIC,
        RAW_BENCH_TOPIC,
        k.dlq_topic,
        Quotas(unlimited, unlimited, unlimited, unlimited),
        Metrics(),
        BENCH_BUFFER_MESSAGES,
        max_buffered_bytes=BENCH_BUFFER_BYTES,
        native=native,
    )
    limits = (1 << 30, 10_000, intake.max_event_bytes)

    def read():
        return intake.read("bench", body, False, "application/json", *limits)

    intake.accept("bench", read(), 0)  # connect first
    producer.flush(30)
    start, accepted = time.perf_counter(), 0
    for i in range(requests):
        batch = read()
        accepted += intake.accept("bench", batch, len(batch)).accepted
        if i % 10 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0 and intake.delivery_failures == 0
    return accepted / (time.perf_counter() - start)


# --- the HTTP load clients -----------------------------------------------------------------

WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99),
    summary.duration))
end
"""


def wrk_run(url: str, key: str, body: bytes, batch: int, connections: int, seconds: int):
    with tempfile.TemporaryDirectory(prefix="ep-wrk-") as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "body.json"
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(body)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
            env={**os.environ, "BENCH_BODY": str(body_file), "BENCH_KEY": key},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, bad_status, socket_errors, p50_us, p99_us, duration_us = map(int, line.split()[1:])
    failed = bad_status + socket_errors
    return HttpRun(
        duration_us / 1e6, requests - bad_status, failed, p50_us / 1e3, p99_us / 1e3, batch
    )


async def _python_load(
    port: int,
    key: str,
    body: bytes,
    batch: int,
    connections: int,
    seconds: int,
    rate: float | None = None,
) -> HttpRun:
    """Closed loop (each connection sends as soon as it has its answer), or with ``rate``
    (events/s) open loop: requests are due at a fixed pace whatever the answers, a free
    connection takes the next due one, and latency counts from when it was due, so time a
    request spent waiting for a connection is not hidden (no coordinated omission)."""
    request = (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    start = time.perf_counter()
    deadline = start + seconds
    interval = batch / rate if rate else 0.0
    due_times = iter(start + i * interval for i in range(10**9))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            due = next(due_times) if rate else time.perf_counter()
            if due >= deadline:
                break
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            if head.startswith(b"HTTP/1.1 202") and orjson.loads(answer)["accepted"] == batch:
                counts["ok"] += 1
            else:
                counts["failed"] += 1
        writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return HttpRun(
        elapsed,
        counts["ok"],
        counts["failed"],
        latencies[len(latencies) // 2] * 1e3,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        batch,
    )


def python_run(
    port: int, key: str, body: bytes, batch: int, connections: int, seconds: int, rate=None
) -> HttpRun:
    return asyncio.run(_python_load(port, key, body, batch, connections, seconds, rate))


# --- the run -------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (uvicorn's workers)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rpartition(")")[2].split()[1]
                )
            except OSError:
                continue
    tree = [root]
    for pid in sorted(parents):  # children have larger pids than their parent here
        if parents[pid] in tree:
            tree.append(pid)
    return tree


def schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of a thread."""
    path = f"/proc/{pid}/task/{tid}/schedstat" if tid else f"/proc/{pid}/schedstat"
    try:
        on_cpu, waiting, _ = Path(path).read_text().split()
    except OSError:
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def collector_times(root: int) -> tuple[float, dict[int, tuple[float, float]]]:
    """CPU seconds of all the collector's threads (on a shared machine steadier than the rate)
    and, per process, its main thread's (on CPU, waiting for a CPU): the event loop."""
    cpu, loops = 0.0, {}
    for pid in process_tree(root):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            cpu += schedstat(pid, int(task.name))[0]
        loops[pid] = schedstat(pid)
    return cpu, loops


def loop_wait_share(before: dict, after: dict, seconds: float) -> float:
    """The share of the run the busiest event loop spent runnable but off CPU."""
    shares = [
        (after[pid][1] - before[pid][1]) / seconds
        for pid in after
        if pid in before and after[pid][0] - before[pid][0] > 0.1 * seconds
    ]
    return max(shares, default=0.0)


def events_in(bootstrap: str, topic: str) -> int:
    consumer = make_consumer(bootstrap, "bench-count")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="HTTP load per run")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=1, help="collector worker processes")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--rate",
        type=float,
        help="offered load in events/s, paced (open loop, the Python client); "
        "default: as fast as the collector answers",
    )
    args = parser.parse_args()
    client = args.client
    if args.rate:
        client = "python"
    elif client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    generator = TrafficGenerator(TrafficSpec(seed=1, customers=1))
    events = [e.event for e in generator.events(args.batch, int(time.time() * 1000))]
    body = orjson.dumps(events)
    validator, codec = EventValidator(), EventCodec()
    encoded = [
        codec.encode(validator.validate(e, "bench", int(time.time() * 1000))[0]) for e in events
    ]

    with throwaway_broker() as (bootstrap, tmp):
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "EP_DATA_DIR": str(tmp)}
        env.update(UNLIMITED)
        env["EP_COLLECTOR_ADMIN_PORT"] = str(free_port())  # admin listener off 8081
        os.environ.update(env)
        settings = Settings()
        bench_topic = TopicSpec(RAW_BENCH_TOPIC, settings.kafka.raw_partitions, 1, {})
        ensure_topics(make_admin(bootstrap), [*platform_topics(settings.kafka), bench_topic])
        key = CustomerStore(settings.customers_db).add("bench")
        port = free_port()
        command = [sys.executable, "-m", "eventplatform.cli", "collect", "--port", str(port)]
        server = subprocess.Popen(
            [*command, "--workers", str(args.workers)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/v1/events"
        raw_rates, intake_rates, python_rates, http_runs = [], [], [], []
        warm_accepted = 0
        try:
            with httpx.Client(timeout=60) as http:
                while True:
                    try:
                        http.get(f"http://127.0.0.1:{port}/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.2)
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                for _ in range(20 * args.workers):  # warm up every worker
                    answer = http.post(url, content=body, headers=headers)
                    assert answer.status_code == 202, answer.text
                    warm_accepted += answer.json()["accepted"]
            for run in range(1, args.runs + 1):
                raw_rates.append(raw_produce_rate(bootstrap, settings, encoded, 200_000))
                intake_rates.append(intake_rate(bootstrap, settings, body, 1000))
                python_rates.append(intake_rate(bootstrap, settings, body, 300, native=False))
                cpu_before, loops_before = collector_times(server.pid)
                load = (
                    wrk_run(url, key, body, args.batch, args.connections, args.seconds)
                    if client == "wrk"
                    else python_run(
                        port, key, body, args.batch, args.connections, args.seconds, args.rate
                    )
                )
                cpu_after, loops_after = collector_times(server.pid)
                load.cpu_s = cpu_after - cpu_before
                load.loop_wait = loop_wait_share(loops_before, loops_after, load.seconds)
                http_runs.append(load)
                print(
                    f"run {run}: raw produce {raw_rates[-1]:,.0f}/s, intake {intake_rates[-1]:,.0f}"
                    f"/s (Python path {python_rates[-1]:,.0f}/s), HTTP "
                    f"{load.events_per_s:,.0f} events/s accepted ({load.requests} x "
                    f"{args.batch} in {load.seconds:.1f}s, {load.failed} failed), "
                    f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, "
                    f"collector CPU {load.cpu_us_per_event:.1f} us/event, event loop waiting "
                    f"for a CPU {load.loop_wait:.0%} of the time",
                    flush=True,
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        answered = warm_accepted + sum(r.requests * r.batch for r in http_runs)
        landed = events_in(bootstrap, settings.kafka.raw_topic)

    http = median([r.events_per_s for r in http_runs])
    raw, intake = median(raw_rates), median(intake_rates)
    p50, p99 = median([r.p50_ms for r in http_runs]), median([r.p99_ms for r in http_runs])
    offered = f"{args.rate:,.0f} events/s offered" if args.rate else "closed loop"
    print(
        f"\nHTTP, events/s accepted (median):  {http:,.0f}  ({args.batch} events per request, "
        f"{args.connections} connections, {offered}, client {client}, {args.workers} worker(s))"
    )
    print(f"request latency p50 / p99 (median): {p50:.1f} ms / {p99:.1f} ms")
    cpu = median([r.cpu_us_per_event for r in http_runs])
    print(f"collector CPU per event (median):   {cpu:.1f} us ({1e6 / cpu:,.0f} events per CPU-s)")
    wait = median([r.loop_wait for r in http_runs])
    print(f"event loop runnable, off CPU:       {wait:.0%} of the time (median)")
    print(f"intake without HTTP (median):      {intake:,.0f} events/s (one thread)")
    print(
        f"  the same, Python path (median):   {median(python_rates):,.0f} events/s "
        "(every event through the Python validator and codec: the reference)"
    )
    print(f"raw confluent-kafka produce:        {raw:,.0f} events/s (same Avro bytes)")
    print(f"ratio HTTP / raw produce:           {http / raw:.2f}")
    print(f"ratio HTTP / intake:                {http / intake:.2f}")
    failed = sum(r.failed for r in http_runs)
    print(
        f"failed requests: {failed}; events answered 202: {answered:,}, in events.raw: {landed:,}"
    )
    # wrk does not count the requests still in flight when it stops; they were taken too
    in_flight = args.runs * args.connections * args.batch if client == "wrk" else 0
    if failed or not answered <= landed <= answered + in_flight:
        sys.exit("the collector lost or refused events under load")


if __name__ == "__main__":
    main()
