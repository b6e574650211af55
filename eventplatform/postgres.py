"""A local PostgreSQL server for Dagster's instance storage, run like the local Kafka broker.

Debian's ``postgresql`` package (``scripts/system-deps.sh`` installs it) puts its programs in
``/usr/lib/postgresql/<major>/bin``, off PATH: they are looked up there, on PATH, or in the
configured folder. ``initdb`` makes the cluster once in its data folder (restarts keep runs
and event logs); ``pg_ctl`` starts it detached on one loopback TCP port (no Unix socket, so
it needs no writable system folder), and stops it. PostgreSQL refuses to run as root: when
this process is root, every server command runs as an unprivileged system user (``postgres``
by default) through ``runuser``, and the data folder is owned by that user. The cluster
trusts connections from loopback only, as the local broker speaks plaintext on loopback: it
is for one machine. A shared deployment points the platform at its own server instead
(``EP_DAGSTER_POSTGRES_URL``) and starts nothing here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventplatform.kafka.broker import free_port, port_is_free
from eventplatform.settings import Settings

DRIVER_SCHEME = "postgresql+psycopg2"


class PostgresError(RuntimeError):
    """Starting or stopping the local PostgreSQL failed; the message says why and what to do."""


@dataclass
class PostgresConfig:
    data_dir: Path  # holds the cluster (``cluster/``) and the server's log
    host: str = "127.0.0.1"
    port: int = 5433  # not 5432: a system cluster may listen there
    user: str = "dagster"  # the cluster's superuser, made by initdb
    database: str = "dagster"
    os_user: str = "postgres"  # who runs the server when we are root
    bin_dir: Path | None = None
    start_timeout_s: float = 60.0

    @classmethod
    def on_free_port(cls, data_dir: Path, **options: Any) -> PostgresConfig:
        """A server on a free loopback port: one per test session."""
        return cls(data_dir, port=free_port(), **options)

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Dagster connects with. The driver is named: SQLAlchemy 2.1 reads a
        bare ``postgresql://`` as psycopg 3, and dagster-postgres ships psycopg2."""
        return f"{DRIVER_SCHEME}://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    answering: bool
    url: str
    detail: str


def find_bin_dir(configured: Path | None = None) -> Path:
    """The folder with initdb and pg_ctl: configured, on PATH, or Debian's newest major."""
    if configured is not None:
        if not (configured / "pg_ctl").exists():
            raise PostgresError(f"no pg_ctl in {configured} (EP_DAGSTER_POSTGRES_BIN_DIR)")
        return configured
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    majors = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    debian = sorted(majors, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)
    if debian:
        return debian[-1]
    raise PostgresError(
        "PostgreSQL not found (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
        "`make setup` installs it (Debian: apt-get install postgresql), or set "
        "EP_DAGSTER_POSTGRES_BIN_DIR, or point EP_DAGSTER_POSTGRES_URL at a server you run."
    )


def _is_root() -> bool:
    return os.geteuid() == 0


class LocalPostgres:
    """Initialise, start, stop and inspect one local PostgreSQL cluster."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config

    # -- running commands as the server's user ----------------------------------------------

    def _as_server_user(self, args: list[str]) -> list[str]:
        if not _is_root():
            return args
        runuser = shutil.which("runuser")
        if not runuser:
            raise PostgresError("running as root, but runuser (util-linux) is not on PATH")
        return [runuser, "-u", self.config.os_user, "--", *args]

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        binary = str(find_bin_dir(self.config.bin_dir) / program)
        return subprocess.run(
            self._as_server_user([binary, *args]),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd="/",  # the server's user may not be allowed into ours
        )

    def _prepare_data_dir(self) -> None:
        """Make the data folder and, as root, give it to the server's user (with clear errors
        when that user is missing or cannot reach it)."""
        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True)
        if not _is_root():
            return
        try:
            account = pwd.getpwnam(c.os_user)
        except KeyError:
            raise PostgresError(
                f"running as root, and PostgreSQL refuses root: it runs as the system user "
                f"{c.os_user!r}, which does not exist. Install the postgresql package (it "
                "creates `postgres`) or set EP_DAGSTER_POSTGRES_OS_USER to an unprivileged user."
            ) from None
        for path in (c.data_dir, *c.data_dir.glob("*")):
            os.chown(path, account.pw_uid, account.pw_gid)
        reach = subprocess.run(
            self._as_server_user(["test", "-w", str(c.data_dir)]), stdin=subprocess.DEVNULL
        )
        if reach.returncode != 0:
            raise PostgresError(
                f"the user {c.os_user!r} cannot write {c.data_dir}: a folder above it is closed "
                "to other users (as /root or pytest's temporary folders are). Set "
                "EP_DAGSTER_POSTGRES_DATA_DIR to a folder it can reach (for example under /var/lib "
                "or /tmp)."
            )

    # -- lifecycle ------------------------------------------------------------------------

    def _init_once(self) -> None:
        c = self.config
        if (c.cluster_dir / "PG_VERSION").exists():
            return
        result = self._run(
            "initdb",
            "-D",
            str(c.cluster_dir),
            "-U",
            c.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def status(self) -> PostgresStatus:
        c = self.config
        running = (c.cluster_dir / "postmaster.pid").exists() and (
            self._run("pg_ctl", "status", "-D", str(c.cluster_dir)).returncode == 0
        )
        answering = running and self._answers()
        if running and answering:
            detail = f"running on {c.host}:{c.port} (data in {c.cluster_dir})"
        elif running:
            detail = f"the server is up but does not answer on {c.host}:{c.port} yet"
        else:
            detail = "not running"
        return PostgresStatus(running, answering, c.url, detail)

    def _answers(self, database: str = "postgres") -> bool:
        import psycopg2

        c = self.config
        try:
            psycopg2.connect(
                host=c.host, port=c.port, user=c.user, dbname=database, connect_timeout=2
            ).close()
        except psycopg2.OperationalError:
            return False
        return True

    def start(self) -> PostgresStatus:
        """Start the server (or find it running), wait until it answers, create the database."""
        c = self.config
        if not self.status().running:
            if not port_is_free(c.host, c.port):
                raise PostgresError(
                    f"port {c.port} on {c.host} is taken by another process: stop it, choose "
                    "another (EP_DAGSTER_POSTGRES_PORT), or point EP_DAGSTER_POSTGRES_URL at the "
                    "server you already run."
                )
            self._prepare_data_dir()
            self._init_once()
            options = f"-c listen_addresses={c.host} -p {c.port} -c unix_socket_directories=''"
            result = self._run(
                "pg_ctl",
                "start",
                "-D",
                str(c.cluster_dir),
                "-l",
                str(c.log_file),
                "-w",
                "-t",
                str(int(c.start_timeout_s)),
                "-o",
                options,
            )
            if result.returncode != 0:
                raise PostgresError(
                    f"PostgreSQL did not start ({result.stdout.strip()} {result.stderr.strip()}); "
                    f"last lines of {c.log_file}:\n{self.log_tail()}"
                )
        self._wait_until_answering()
        self._ensure_database()
        return self.status()

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while not self._answers():
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"PostgreSQL does not answer on {self.config.host}:{self.config.port} within "
                    f"{self.config.start_timeout_s:.0f}s; last lines of its log:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def _ensure_database(self) -> None:
        import psycopg2

        c = self.config
        connection = psycopg2.connect(host=c.host, port=c.port, user=c.user, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (c.database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{c.database}"')
        finally:
            connection.close()

    def stop(self) -> bool:
        """Stop cleanly (fast shutdown: open sessions are ended). False if not running."""
        if not self.status().running:
            return False
        result = self._run("pg_ctl", "stop", "-D", str(self.config.cluster_dir), "-m", "fast", "-w")
        if result.returncode != 0:
            raise PostgresError(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}")
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.config.log_file.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])


def local_postgres(settings: Settings) -> LocalPostgres:
    """The server the settings describe (the one `eventplatform postgres start` manages)."""
    d = settings.dagster
    return LocalPostgres(
        PostgresConfig(
            data_dir=settings.postgres_data_dir,
            host=d.postgres_host,
            port=d.postgres_port,
            user=d.postgres_user,
            database=d.postgres_db,
            os_user=d.postgres_os_user,
            bin_dir=d.postgres_bin_dir,
            start_timeout_s=d.postgres_start_timeout_s,
        )
    )
