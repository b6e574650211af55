"""Collector throughput over HTTP vs the bare validate+encode rate, in the same run.

    .venv/bin/python bench/bench_collector.py [--runs 3] [--requests 100] [--batch 500]

Starts a throwaway broker and `eventplatform collect` on loopback, sends batches of valid
mixed events with one client over keep-alive, and prints events/s accepted (202) per run,
the median, and the ratio to validate+encode alone on this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, throwaway_broker

from eventplatform.collect.customers import CustomerStore
from eventplatform.events import EventCodec, EventValidator
from eventplatform.kafka.broker import free_port
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec


def bare_rate(events: list[dict], rounds: int = 3) -> float:
    validator, codec = EventValidator(), EventCodec()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for event in events:
            datum, _ = validator.validate(event, "bench", 1795428000000)
            codec.encode(datum)
        rates.append(len(events) / (time.perf_counter() - start))
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    generator = TrafficGenerator(TrafficSpec(seed=1, customers=1))
    events = [e.event for e in generator.events(args.batch, int(time.time() * 1000))]
    body = orjson.dumps(events)
    with throwaway_broker() as (bootstrap, tmp):
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EP_DATA_DIR": str(tmp),
            "EP_COLLECTOR_RATE_PER_S": "1e9",
            "EP_COLLECTOR_BURST": "1e9",
            "EP_COLLECTOR_HARD_CAP_PER_S": "1e9",
            "EP_COLLECTOR_HARD_CAP_BURST": "1e9",
        }
        os.environ.update(env)
        settings = Settings()
        ensure_topics(make_admin(bootstrap), platform_topics(settings.kafka))
        key = CustomerStore(settings.customers_db).add("bench")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "eventplatform.cli", "collect", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/v1/events"
        try:
            client = httpx.Client(timeout=60)
            while True:
                try:
                    client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            client.post(url, content=body, headers=headers)  # warm up
            rates = []
            for run in range(args.runs):
                start, accepted = time.perf_counter(), 0
                for _ in range(args.requests):
                    response = client.post(url, content=body, headers=headers)
                    assert response.status_code == 202, response.text
                    accepted += response.json()["accepted"]
                rate = accepted / (time.perf_counter() - start)
                rates.append(rate)
                print(f"run {run + 1}: {accepted} events accepted over HTTP, {rate:,.0f} events/s")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    bare = bare_rate(events * 20)
    http = median(rates)
    print(
        f"median over HTTP:        {http:,.0f} events/s "
        f"({args.batch} events per request, 1 client, 1 worker)"
    )
    print(f"validate+encode alone:   {bare:,.0f} events/s (one core, same events)")
    print(f"ratio HTTP / bare:       {http / bare:.2f}")


if __name__ == "__main__":
    main()
