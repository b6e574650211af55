"""The whole platform as `make run` starts it: collector, `dagster dev` with its daemon and
sensors, simulated traffic over HTTP. What the simulator sent reconciles with what landed
(lake and ClickHouse) and with the dead letters; `status` and `reconcile` say so; the Dagster
UI, rendered in headless Chromium (Debian's package), lists the platform's assets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from eventplatform.clickhouse import platform_clickhouse
from eventplatform.kafka.broker import free_port
from eventplatform.runner import Platform, log_dir
from eventplatform.settings import REPO_ROOT, Settings, get_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO_ROOT / "test-output" / "ui"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PLATFORM_ASSETS = [
    "kafka_topics",
    "events_lake",
    "events_clickhouse",
    "dead_letters",
    "campaign_budgets",
]
CLI = [sys.executable, "-m", "eventplatform.cli"]
USAGE_QUERY = (
    "SELECT customer_id, sum(events) AS events, sum(dead_letters) AS dead_letters "
    "FROM customer_usage_daily GROUP BY customer_id ORDER BY customer_id"
)


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            *CHROME_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--window-size=1600,1000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s}s")


def landed_counts(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Landed events and landed collector rejections, per customer."""
    clickhouse = platform_clickhouse(settings)
    with clickhouse.session() as client:
        db = clickhouse.database
        events = client.query(f"SELECT customer_id, count() FROM {db}.events GROUP BY 1")
        rejected = client.query(
            f"SELECT customer_id, count() FROM {db}.dead_letters WHERE stage = 'collect' GROUP BY 1"
        )
    return dict(events.result_rows), dict(rejected.result_rows)


@pytest.fixture
def running_platform(platform_env: Settings, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EP_DAGSTER_PORT", str(free_port()))
    monkeypatch.setenv("EP_COLLECTOR_PORT", str(free_port()))
    monkeypatch.setenv("EP_COLLECTOR_ADMIN_PORT", str(free_port()))
    monkeypatch.setenv("EP_LAND_IDLE_STOP_S", "10")
    monkeypatch.setenv("EP_LAND_SENSOR_INTERVAL_S", "5")
    settings = get_settings()
    platform = Platform(settings, log=lambda line: None)
    try:
        platform.start_kafka()  # the session broker is "external": topics only
        platform.start_collector()
        platform.start_dagster()
        yield settings
    finally:
        # Shown by pytest only when the test fails: what each service said, last.
        for service in platform.services:
            if service.log_file.exists():
                tail = service.log_file.read_text(errors="replace")[-4000:]
                print(f"--- {service.name} ({service.log_file}), last lines:\n{tail}")
        platform.stop()


def test_simulated_traffic_lands_reconciles_and_shows_in_the_ui(
    running_platform: Settings, tmp_path: Path
) -> None:
    settings = running_platform
    summary_file = tmp_path / "sent.json"
    traffic = ["--rate", "150", "--duration", "8", "--bad-rate", "0.02"]
    simulated = subprocess.run(
        [*CLI, "simulate", *traffic, "--summary", str(summary_file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    taken = json.loads(summary_file.read_text())["collector"]
    expected_events = {c: t["accepted"] + t["overflowed"] for c, t in taken.items()}
    expected_rejected = {c: t["rejected"] for c, t in taken.items() if t["rejected"]}
    assert sum(expected_events.values()) > 500 and sum(expected_rejected.values()) > 0

    # The daemon's sensors start landing runs; wait until everything taken has landed.
    deadline = time.monotonic() + 240
    while True:
        events, rejected = landed_counts(settings)
        if events == expected_events and rejected == expected_rejected:
            break
        assert time.monotonic() < deadline, (events, expected_events, rejected)
        time.sleep(3)

    lake_total = duckdb.sql(
        f"SELECT count(), count(DISTINCT event_id) "
        f"FROM read_parquet('{settings.lake_dir}/events/**/*.parquet')"
    ).fetchall()[0]
    assert lake_total == (sum(expected_events.values()),) * 2

    # -> a mart: the usage mart, built as a Dagster run, counts what was sent per customer.
    days = ["--start", "yesterday", "--end", "today"]
    built = subprocess.run(
        [*CLI, "marts", "build", *days, "--mart", "customer_usage_daily"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    usage = subprocess.run(
        [*CLI, "sql", "--format", "csv", USAGE_QUERY], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 0, usage.stderr
    rows = [line.split(",") for line in usage.stdout.strip().splitlines()[1:]]
    assert {c: int(n) for c, n, _ in rows if int(n)} == expected_events
    assert {c: int(d) for c, _, d in rows if int(d)} == expected_rejected

    reconciled = subprocess.run(
        [*CLI, "reconcile", "--since", "1h"], capture_output=True, text=True, timeout=180
    )
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "every message is landed, dead-lettered or pending" in reconciled.stdout
    status = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=180)
    assert status.returncode == 0, status.stderr
    assert "answering" in status.stdout and "shard 0: 0" in status.stdout
    for customer in expected_events:
        assert customer in status.stdout

    # The UI: the asset catalog lists the platform's assets; screenshots kept.
    assert CHROMIUM, "Chromium is missing: `make setup` installs it (scripts/system-deps.sh)"
    base = f"http://127.0.0.1:{settings.dagster.port}"
    wait_for(f"{base}/server_info")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dom = chromium(f"{base}/assets", tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for asset in PLATFORM_ASSETS:
        assert asset in dom.stdout, f"{asset} not in the rendered asset catalog"
    for name, path in (("asset-catalog", "/assets"), ("events-lake", "/assets/events_lake")):
        shot = SCREENSHOTS / f"{name}.png"
        shot.unlink(missing_ok=True)
        chromium(f"{base}{path}", tmp_path / f"profile-{name}", f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not blank

    # the webserver's and the daemon's output went to their files, without the start-up
    # warnings `dagster dev` used to print (the superseded command, a dagster.yaml in its
    # working directory, the sensors' `owners` beta notice): a clean start warns of nothing.
    webserver_log = (log_dir(settings) / "dagster.log").read_text()
    daemon_log = (log_dir(settings) / "dagster-daemon.log").read_text()
    assert "Serving dagster-webserver" in webserver_log
    assert "SensorDaemon" in daemon_log
    for log in (webserver_log, daemon_log):
        for notice in ("is superseded", "will not be used", "Parameter `owners`"):
            assert notice not in log, notice
