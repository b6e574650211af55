"""The real Apache Kafka broker, run locally from its jars in KRaft mode.

The jars come from Maven Central (``pom.xml`` beside this file, resolved by ``mvn
dependency:copy-dependencies`` into the cache folder) or from an existing installation
(``KAFKA_HOME``). A broker is one node that is both broker and controller, listening on
loopback; its storage is formatted once and kept in its data folder, so restarts keep topics
and offsets. The broker runs detached from the command that started it (pid file) so that
``eventplatform kafka stop`` or another process can stop it later.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from eventplatform.settings import Settings

KAFKA_DIR = Path(__file__).resolve().parent
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.yaml"


class BrokerError(RuntimeError):
    """Starting or stopping the broker failed; the message says why and what to do."""


@dataclass
class BrokerConfig:
    libs_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    node_id: int = 1
    start_timeout_s: float = 60.0
    cluster_id: str | None = None  # a multi-node cluster formats every node with one id
    # Extra server.properties (a test cluster sets its own quorum and replication here).
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, libs_dir: Path, data_dir: Path, **options: Any) -> BrokerConfig:
        """A broker on free loopback ports: one per test session, benchmark or fault test."""
        return cls(libs_dir, data_dir, port=free_port(), controller_port=free_port(), **options)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool
    detail: str


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise BrokerError(
            "Java not found: the Kafka broker needs a JRE 17 or newer on PATH or in JAVA_HOME "
            "(Debian: apt-get install openjdk-17-jre-headless), or point KAFKA_BOOTSTRAP_SERVERS "
            "at an existing cluster."
        )
    return java


def install_jars(libs_dir: Path, pom: Path = POM) -> Path:
    """Resolve the broker's jars from Maven Central into ``libs_dir`` (once; idempotent)."""
    stamp = libs_dir / ".resolved"
    if stamp.exists() and stamp.read_text() == pom.read_text():
        return libs_dir
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "Maven (mvn) not found: it resolves the Kafka jars from Maven Central "
            "(Debian: apt-get install maven), or set KAFKA_HOME to an existing Kafka install."
        )
    if libs_dir.exists():
        shutil.rmtree(libs_dir)
    libs_dir.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs_dir}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(
            f"resolving Kafka jars failed ({' '.join(cmd)}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    if not any(libs_dir.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {libs_dir}")
    stamp.write_text(pom.read_text())
    return libs_dir


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# librdkafka logs every refused connection while we poll a starting broker: keep those quiet.
_quiet_logger = logging.getLogger("eventplatform.kafka.probe")
_quiet_logger.setLevel(logging.CRITICAL)
_quiet_logger.propagate = False


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000, "logger": _quiet_logger}
    )
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return bool(metadata.brokers)


class LocalBroker:
    """Start, stop and inspect one local broker+controller node."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config

    def _read_pid(self) -> int | None:
        try:
            pid = int(self.config.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        return pid if b"kafka.Kafka" in cmdline else None

    def status(self) -> BrokerStatus:
        pid = self._read_pid()
        answering = broker_answers(self.config.bootstrap, timeout_s=2.0) if pid else False
        if pid and answering:
            detail = f"running (pid {pid}) on {self.config.bootstrap}"
        elif pid:
            detail = f"process {pid} is up but does not answer on {self.config.bootstrap} yet"
        else:
            detail = "not running"
        return BrokerStatus(bool(pid), pid, self.config.bootstrap, answering, detail)

    def _write_properties(self) -> None:
        c = self.config
        props = {
            "process.roles": "broker,controller",
            "node.id": str(c.node_id),
            "controller.quorum.voters": f"{c.node_id}@{c.host}:{c.controller_port}",
            "listeners": f"PLAINTEXT://{c.host}:{c.port},CONTROLLER://{c.host}:{c.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{c.host}:{c.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(c.log_dirs),
            # Topics are code (eventplatform topics ensure): nothing appears by accident.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "60000",
        }
        props.update(c.overrides)
        c.data_dir.mkdir(parents=True, exist_ok=True)
        c.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _classpath(self) -> str:
        libs = self.config.libs_dir
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"Kafka jars not found in {libs}: run `eventplatform kafka install` "
                "(make setup does), or set KAFKA_HOME to an existing Kafka installation."
            )
        return f"{libs}/*"

    def _format_storage_once(self, java: str, classpath: str) -> None:
        if (self.config.log_dirs / "meta.properties").exists():
            return
        cluster_id = self.config.cluster_id or new_cluster_id()
        cmd = [
            java,
            "-cp",
            classpath,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",  # one in 64 ids starts with "-": not an option
            "-c",
            str(self.config.properties_file),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self) -> BrokerStatus:
        """Start the broker (or find it running) and wait until it answers."""
        c = self.config
        current = self.status()
        if current.running:
            self._wait_until_answering(current.pid)
            return self.status()
        java = java_executable()
        classpath = self._classpath()
        for port in (c.port, c.controller_port):
            if not port_is_free(c.host, port):
                raise BrokerError(
                    f"port {port} on {c.host} is taken by another process: stop it, or choose "
                    "other ports (EP_KAFKA_PORT, EP_KAFKA_CONTROLLER_PORT), or point "
                    "KAFKA_BOOTSTRAP_SERVERS at a broker you already run."
                )
        self._write_properties()
        self._format_storage_once(java, classpath)
        cmd = [
            java,
            f"-Xmx{c.heap}",
            f"-Xms{c.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(c.properties_file),
        ]
        with open(c.log_file, "ab") as log:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        c.pid_file.write_text(str(process.pid))
        self._wait_until_answering(process.pid, process)
        return self.status()

    def _wait_until_answering(self, pid: int | None, process: subprocess.Popen | None = None):
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                self.config.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with code {process.returncode} while starting; "
                    f"last lines of {self.config.log_file}:\n{self.log_tail()}"
                )
            if broker_answers(self.config.bootstrap, timeout_s=1.0):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"the broker (pid {pid}) did not answer on {self.config.bootstrap} within "
            f"{self.config.start_timeout_s:.0f}s; last lines of its log:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop cleanly (SIGTERM, then SIGKILL after ``timeout_s``). False if not running."""
        pid = self._read_pid()
        if pid is None:
            self.config.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.config.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault-injection tests)."""
        pid = self._read_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.config.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child not yet reaped) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (what random-uuid gives)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def local_broker(settings: Settings) -> LocalBroker:
    """The broker the settings describe (the one `eventplatform kafka start` manages)."""
    k = settings.kafka
    return LocalBroker(
        BrokerConfig(
            libs_dir=settings.kafka_libs_dir,
            data_dir=settings.kafka_data_dir,
            host=k.host,
            port=k.port,
            controller_port=k.controller_port,
            heap=k.heap,
            start_timeout_s=k.start_timeout_s,
        )
    )
