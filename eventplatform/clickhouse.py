"""ClickHouse access through clickhouse-connect: the embedded engine (chdb) or a server.

The embedded engine keeps its data in one folder that only one process may have open at a
time, and the platform is several processes (collector, landing runs, Dagster runs, the
CLI). So with a ``chdb://`` DSN each unit of work opens the engine under an inter-process
file lock and closes it after (about 45 ms). With an ``http(s)://`` DSN (a server or cluster)
the client is opened once and kept; there is no lock.
"""

from __future__ import annotations

import fcntl
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import clickhouse_connect
from clickhouse_connect.driver.client import Client

if TYPE_CHECKING:
    from eventplatform.settings import Settings


class ClickHouse:
    def __init__(self, dsn: str, database: str = "eventplatform") -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
            raise ValueError(f"database name must be an identifier, got {database!r}")
        self.dsn = dsn
        self.database = database
        self.embedded = dsn.startswith("chdb://")
        self._client: Client | None = None
        self._thread_lock = threading.Lock()  # one engine handle per process at a time, too
        if self.embedded:
            path = Path(dsn.removeprefix("chdb://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_path = path.with_name(path.name + ".lock")

    @contextmanager
    def session(self) -> Iterator[Client]:
        """A client for one unit of work (a batch insert, a query, a DDL run)."""
        if not self.embedded:
            with self._thread_lock:
                if self._client is None:
                    self._client = clickhouse_connect.get_client(dsn=self.dsn)
            yield self._client
            return
        with self._thread_lock, open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            client = clickhouse_connect.get_client(dsn=self.dsn)
            try:
                yield client
            finally:
                client.close()
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def apply_ddl(self, sql_dir: Path) -> list[str]:
        """Run every ``*.sql`` file in ``sql_dir`` in name order (idempotent DDL only).

        ``{database}`` in the files is the configured database. Returns the files applied.
        """
        files = sorted(sql_dir.glob("*.sql"))
        with self.session() as client:
            client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            for path in files:
                for statement in split_statements(path.read_text()):
                    client.command(statement.replace("{database}", self.database))
        return [p.name for p in files]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def split_statements(sql: str) -> list[str]:
    """Statements of a DDL file: split on ``;`` at line ends, ``--`` comments dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


def platform_clickhouse(settings: Settings) -> ClickHouse:
    """The platform's ClickHouse (from settings), with the DDL in ``sql/clickhouse`` applied."""
    clickhouse = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
    clickhouse.apply_ddl(settings.paths.sql_dir / "clickhouse")
    return clickhouse
