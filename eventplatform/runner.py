"""`eventplatform run`: starts the whole platform on this machine and stops it on Ctrl-C.

Order: broker (unless an external cluster is configured), topics, then the long-running
services as child processes (`dagster dev` now; later issues add theirs). Whatever this
command started, it stops, children first, the broker last.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eventplatform.kafka.broker import local_broker
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings


def prepare_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME with the repository's dagster.yaml in it (copied when it changed)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    return home


def platform_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes: the same settings, whatever their working directory."""
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    env["EP_DATA_DIR"] = str(settings.data_dir)
    return env


@dataclass
class Service:
    name: str
    process: subprocess.Popen


class Platform:
    """The processes `eventplatform run` owns."""

    def __init__(self, settings: Settings, log=print) -> None:
        self.settings = settings
        self.log = log
        self.services: list[Service] = []
        self.started_broker = False

    def start_kafka(self) -> None:
        if self.settings.kafka.is_external:
            self.log(f"kafka: using external cluster {self.settings.kafka.bootstrap}")
        else:
            broker = local_broker(self.settings)
            self.started_broker = not broker.status().running
            self.log(f"kafka: {broker.start().detail}")
        reports = ensure_topics(
            make_admin(self.settings.kafka.bootstrap), platform_topics(self.settings.kafka)
        )
        for report in reports:
            self.log(f"topic {report}")

    def spawn(self, name: str, args: list[str]) -> None:
        process = subprocess.Popen(
            args, env=platform_env(self.settings), cwd=REPO_ROOT, start_new_session=True
        )
        self.services.append(Service(name, process))

    def start_dagster(self) -> None:
        d = self.settings.dagster
        self.spawn(
            "dagster",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
                "-h",
                d.host,
                "-p",
                str(d.port),
            ],
        )
        self.log(f"dagster: UI at http://{d.host}:{d.port}")

    def start_collector(self) -> None:
        c = self.settings.collector
        self.spawn("collector", [sys.executable, "-m", "eventplatform.cli", "collect"])
        url, admin = f"http://{c.host}:{c.port}", f"http://{c.admin_host}:{c.admin_port}"
        deadline = time.monotonic() + 60
        while not (_answers(f"{url}/healthz") and _answers(f"{admin}/healthz")):
            if time.monotonic() > deadline or self.services[-1].process.poll() is not None:
                raise RuntimeError(f"the collector did not come up on {url} and {admin}")
            time.sleep(0.3)
        self.log(f"collector: {url}/v1/events")
        self.log(f"collector admin: {admin}/metrics, {admin}/readyz, {admin}/openapi.json")

    def start_demo(self, rate: float) -> None:
        """Demo customers and campaigns, then simulated traffic through the collector."""
        from eventplatform.simulate.cli import demo_keys_file, demo_setup
        from eventplatform.simulate.traffic import TrafficSpec

        demo_setup(self.settings, TrafficSpec(low_budgets=True))
        self.log(f"demo: customers' keys in {demo_keys_file(self.settings)}, campaigns loaded")
        self.spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "eventplatform.cli",
                "simulate",
                "--rate",
                str(rate),
                "--duration",
                str(7 * 86400),
                "--anomalies",
                "--bad-rate",
                "0.01",
                "--day-seconds",
                "3600",
            ],
        )
        self.log(f"simulator: {rate:g} events/s on average (a day compressed into an hour)")

    def wait(self) -> int:
        """Block until a service exits or we are told to stop; return an exit code."""
        stop = {"requested": False}

        def request_stop(signum, frame):
            stop["requested"] = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop["requested"]:
            for service in self.services:
                code = service.process.poll()
                if code is not None:
                    self.log(f"{service.name} exited with code {code}; stopping the platform")
                    return code or 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        for service in reversed(self.services):
            if service.process.poll() is None:
                self.log(f"stopping {service.name}")
                os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        if self.started_broker:
            self.log("stopping kafka")
            local_broker(self.settings).stop()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def run_platform(settings: Settings, demo: bool = True, demo_rate: float = 100.0) -> int:
    platform = Platform(settings)
    try:
        platform.start_kafka()
        platform.start_collector()
        platform.start_dagster()
        if demo:
            platform.start_demo(demo_rate)
        platform.log("running; Ctrl-C stops everything started here")
        return platform.wait()
    finally:
        platform.stop()
