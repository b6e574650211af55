"""The Dagster UI a data engineer opens: `dagster dev` started as `make run` starts it, the
asset catalog rendered in headless Chromium (Debian's package), a screenshot kept."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from eventplatform.kafka.broker import free_port
from eventplatform.runner import Platform
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
PLATFORM_ASSETS = ["kafka_topics", "campaign_budgets"]


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


def test_dagster_ui_lists_the_platform_assets(
    platform_env: Settings, monkeypatch, tmp_path: Path
) -> None:
    assert CHROMIUM, "Chromium is missing: `make setup` installs it (scripts/system-deps.sh)"
    port = free_port()
    monkeypatch.setenv("EP_DAGSTER_PORT", str(port))
    get_settings.cache_clear()
    platform = Platform(get_settings(), log=lambda line: None)
    platform.start_dagster()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/server_info")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        dom = chromium(f"{base}/assets", tmp_path / "profile", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for asset in PLATFORM_ASSETS:
            assert asset in dom.stdout, f"{asset} not in the rendered asset catalog"
        shot = SCREENSHOTS / "asset-catalog.png"
        shot.unlink(missing_ok=True)
        chromium(f"{base}/assets", tmp_path / "profile2", f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not blank
    finally:
        platform.stop()
