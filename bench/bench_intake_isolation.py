"""One customer's gzip bombs beside another customer's usual batches, through the collector.

    .venv/bin/python bench/bench_intake_isolation.py [--runs 3] [--bombs 6] [--requests 40]

Starts a throwaway broker and `eventplatform collect` on loopback (1 worker, default
settings). Each run: ``--bombs`` concurrent gzip NDJSON bodies of about 20 KB from customer
"bomber", each inflating to 20 MiB of ``{}`` lines (7 million "events"), while customer
"other" posts 50-event JSON batches one after another until it has sent ``--requests`` and
every bomb is answered. Prints the bombs' answers and times, the other customer's latency
(p50 / p99 / max) and failures, and the collector's peak RSS (VmHWM) after the run.
The scenario is the one ``test_isolation_intake.py`` asserts on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import throwaway_broker

from eventplatform.collect.customers import CustomerStore
from eventplatform.kafka.broker import free_port
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.test_isolation_intake import bomb_scenario, peak_rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bombs", type=int, default=6)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with throwaway_broker() as (bootstrap, tmp):
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "EP_DATA_DIR": str(tmp)}
        port, admin_port = free_port(), free_port()
        env["EP_COLLECTOR_ADMIN_PORT"] = str(admin_port)
        os.environ.update(env)
        settings = Settings()
        ensure_topics(make_admin(bootstrap), platform_topics(settings.kafka))
        store = CustomerStore(settings.customers_db)
        bomber, other = store.add("bomber"), store.add("other")
        server = subprocess.Popen(
            [sys.executable, "-m", "eventplatform.cli", "collect", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            for run in range(1, args.runs + 1):
                f = asyncio.run(bomb_scenario(url, bomber, other, args.bombs, args.requests))
                failed = sum(1 for s in f.other_statuses if s != 202)
                bombs = ", ".join(
                    f"{s} in {t:.2f}s"
                    for s, t in sorted(zip(f.bomb_statuses, f.bomb_seconds, strict=True))
                )
                print(
                    f"run {run}: bombs: {bombs}\n"
                    f"  other customer: {len(f.other_seconds)} requests, {failed} failed, "
                    f"p50 {f.percentile(0.5) * 1000:.1f} ms, p99 {f.percentile(0.99) * 1000:.1f}"
                    f" ms, max {max(f.other_seconds) * 1000:.1f} ms\n"
                    f"  collector peak RSS so far: {peak_rss_mib(server.pid):.0f} MiB",
                    flush=True,
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)


if __name__ == "__main__":
    main()
