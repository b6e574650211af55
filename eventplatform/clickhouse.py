"""ClickHouse access through clickhouse-connect: the embedded engine (chdb) or a server.

The embedded engine keeps its data in one folder that only one process may have open at a
time, and the platform is several processes (collector, landing runs, Dagster runs, the
CLI). So with a ``chdb://`` DSN each unit of work opens the engine under an inter-process
file lock and closes it after (50-150 ms, more as parts accumulate). A process that works
continuously (a landing run) takes a :meth:`ClickHouse.lease` instead: the engine stays open
across its units of work, and is handed over only when another process is waiting for it:
at :meth:`ClickHouse.renew` between units of work, and by the lease itself whenever no
session of the process has it open (a leaseholder waiting on Kafka never holds others up).
Waiters say so by holding a shared lock on ``<folder>.want`` while they wait for
``<folder>.lock``; the lock file names its holder (:func:`engine_holder`).
With an ``http(s)://`` DSN (a server or cluster) the client is opened once and kept; there is
no lock, and a lease is a no-op.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client

if TYPE_CHECKING:
    from eventplatform.settings import Settings


class ClickHouse:
    def __init__(
        self, dsn: str, database: str = "eventplatform", engine_malloc_conf: str = ""
    ) -> None:
        """``engine_malloc_conf``: jemalloc options for the embedded engine (see
        :func:`configure_engine_allocator`)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
            raise ValueError(f"database name must be an identifier, got {database!r}")
        self.dsn = dsn
        self.database = database
        self.embedded = dsn.startswith("chdb://")
        if self.embedded and engine_malloc_conf:
            configure_engine_allocator(engine_malloc_conf)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        if self.embedded:
            path = Path(dsn.removeprefix("chdb://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._engine = _EngineSlot.of(path)

    @property
    def opens(self) -> int:
        """Times this process opened the embedded engine of this folder."""
        return self._engine.opens if self.embedded else 0

    @contextmanager
    def session(self) -> Iterator[Client]:
        """A client for one unit of work (a batch insert, a query, a DDL run).

        Sessions nest: inside an open one, ``session()`` in the same thread yields the same
        client, so a caller can hold the engine across several steps that each ask for one."""
        if not self.embedded:
            with self._client_lock:
                if self._client is None:
                    self._client = clickhouse_connect.get_client(dsn=self.dsn)
            yield self._client
            return
        with self._engine.session() as client:
            yield client

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Keep the embedded engine open for every session of this process (any thread, any
        ``ClickHouse`` of the folder) until the lease ends, instead of opening it per session.
        For a process that works without pause; call :meth:`renew` between its units of work
        so that other processes get their turn (the lease also hands the engine over by
        itself while no session uses it). Leases nest; a no-op with a server DSN."""
        if not self.embedded:
            yield
            return
        with self._engine.lease():
            yield

    def renew(self) -> None:
        """Between units of work under a lease: hand the engine over when another process
        waits for it (close it; the next session reopens it once the other is done). A waiter
        waits at most one unit of work; the leaseholder pays one reopen per handover, as it
        paid one per unit of work without the lease."""
        if self.embedded:
            self._engine.renew()

    def insert_arrow(
        self, client: Client, table: str, data: pa.Table, settings: dict[str, str] | None = None
    ) -> None:
        """``client.insert_arrow``, in less memory with the embedded engine (the landing
        process's peak): see :func:`_insert_arrow_through_file`."""
        if self.embedded:
            _insert_arrow_through_file(client, table, data, settings or {}, self._engine.spool)
        else:
            client.insert_arrow(table, data, settings=settings)

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


# How often a leaseholder looks, while idle, whether another process waits for the engine
IDLE_HAND_OVER_CHECK_S = 0.05


class _EngineSlot:
    """The embedded engine of one folder, for the whole process: every ``ClickHouse`` of the
    folder shares it, so that a lease held through one instance serves sessions asked of
    another (chdb has one engine per process; two instances locking each other out of it in
    one thread would deadlock)."""

    _slots: dict[Path, _EngineSlot] = {}
    _slots_lock = threading.Lock()

    @classmethod
    def of(cls, path: Path) -> _EngineSlot:
        with cls._slots_lock:
            key = path.resolve()
            if key not in cls._slots:
                cls._slots[key] = cls(key)
            return cls._slots[key]

    def __init__(self, path: Path) -> None:
        self.dsn = f"chdb://{path}"
        self.lock_path = path.with_name(path.name + ".lock")
        self.want_path = path.with_name(path.name + ".want")
        # inserts' files (``_insert_arrow_through_file``); those of processes killed
        # mid-insert are removed once per process, when it first uses the engine's folder
        self.spool = path.with_name(path.name + ".inserts")
        self.spool.mkdir(parents=True, exist_ok=True)
        remove_orphaned_inserts(self.spool)
        self.thread_lock = threading.Lock()  # one session of the process at a time
        # the open session of this thread: a nested session() reuses it, so a unit of work
        # made of several steps opens the engine once (each open costs 50-150 ms, more as
        # parts accumulate)
        self.held = threading.local()
        self.leased: _Open | None = None  # the engine a lease keeps open, for every thread
        self.lease_depth = 0
        self.opens = 0
        self._lease_ended: threading.Event | None = None  # stops the lease's hand-over watch

    @contextmanager
    def session(self) -> Iterator[Client]:
        held = getattr(self.held, "client", None)
        if held is not None:  # nested in this thread's open session: the same engine handle
            yield held
            return
        with self.thread_lock:
            if self.lease_depth and self.leased is None:
                self.leased = self._open()  # kept open until the lease ends or hands over
            engine = self.leased if self.leased is not None else self._open()
            self.held.client = engine.client
            try:
                yield engine.client
            finally:
                self.held.client = None
                if engine is not self.leased:
                    engine.close()

    @contextmanager
    def lease(self) -> Iterator[None]:
        with self.thread_lock:
            self.lease_depth += 1
            if self.lease_depth == 1:
                self._lease_ended = threading.Event()
                threading.Thread(
                    target=self._hand_over_while_idle,
                    args=(self._lease_ended,),
                    name="engine-hand-over",
                    daemon=True,
                ).start()
        try:
            yield
        finally:
            with self.thread_lock:
                self.lease_depth -= 1
                if self.lease_depth == 0:
                    if self._lease_ended is not None:
                        self._lease_ended.set()
                        self._lease_ended = None
                    if self.leased is not None:
                        self.leased.close()
                        self.leased = None

    def _hand_over_while_idle(self, ended: threading.Event) -> None:
        """While a lease lasts: whenever no session of this process uses the engine and
        another process waits for it, close it. ``renew()`` between units of work is not
        enough alone: a leaseholder can wait on something else for minutes between two (a
        Kafka commit that waits for a coordinator), and every other process would wait too."""
        while not ended.wait(IDLE_HAND_OVER_CHECK_S):
            if not self.thread_lock.acquire(blocking=False):
                continue  # a session is open (or opening): it is in use
            try:
                if self.leased is not None and self._others_waiting():
                    self.leased.close()
                    self.leased = None
            finally:
                self.thread_lock.release()

    def renew(self) -> None:
        if getattr(self.held, "client", None) is not None:
            return  # inside this thread's own session: not between units of work
        with self.thread_lock:
            if self.leased is not None and self._others_waiting():
                self.leased.close()
                self.leased = None

    def _open(self) -> _Open:
        """The engine under the inter-process lock, announced on ``.want`` while waiting."""
        with open(self.want_path, "a") as want:
            fcntl.flock(want, fcntl.LOCK_SH)  # "someone waits", for a leaseholder's renew()
            lock_file = open(self.lock_path, "a")  # noqa: SIM115 (closed by _Open.close)
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            except BaseException:
                lock_file.close()
                raise
            # the shared lock on .want ends with the with block: nobody waits any more
        _say_who_holds(lock_file)
        try:
            client = clickhouse_connect.get_client(dsn=self.dsn)
        except BaseException:
            lock_file.close()  # closing the file releases the lock
            raise
        self.opens += 1
        return _Open(client, lock_file)

    def _others_waiting(self) -> bool:
        """Another process holds ``.want``'s shared lock: it waits for the engine."""
        with open(self.want_path, "a") as want:
            try:
                fcntl.flock(want, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(want, fcntl.LOCK_UN)
            return False


def _say_who_holds(lock_file: IO[str]) -> None:
    """The holder's pid in the lock file, for whoever waits (:func:`engine_holder`)."""
    lock_file.truncate(0)
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()


def engine_holder(dsn: str) -> int | None:
    """The pid of the process that holds (or last held) the embedded engine of ``dsn``: the
    one to ask (``kill -USR1``, see ``eventplatform.cli``) when a session waits long."""
    path = Path(dsn.removeprefix("chdb://"))
    try:
        text = path.with_name(path.name + ".lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


class _Open:
    """An open embedded engine and the inter-process lock held for it."""

    def __init__(self, client: Client, lock_file) -> None:
        self.client = client
        self.lock_file = lock_file

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            fcntl.flock(self.lock_file, fcntl.LOCK_UN)
            self.lock_file.close()


def configure_engine_allocator(malloc_conf: str) -> None:
    """Options for the jemalloc inside chdb, which reads them from ``JE_MALLOC_CONF`` once, when
    the library loads: so only before the process first opens the engine (a no-op after, and
    when the variable is already set)."""
    if "chdb" not in sys.modules:
        os.environ.setdefault("JE_MALLOC_CONF", malloc_conf)


def remove_orphaned_inserts(spool: Path) -> list[Path]:
    """Delete the insert files of processes that are gone (killed mid-insert: their
    ``finally`` never ran), so that crashes do not fill the disk a batch at a time. A file
    names its process; one whose process still runs is in use."""
    removed = []
    for path in spool.glob("ep-insert-*.arrows"):
        match = re.fullmatch(r"ep-insert-(\d+)-.*\.arrows", path.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _insert_arrow_through_file(
    client: Client, table: str, data: pa.Table, settings: dict[str, str], spool: Path
) -> None:
    """``client.insert_arrow`` into the embedded engine, without its serialised copies.

    clickhouse-connect's ``insert_arrow`` serialises the table into one Arrow IPC buffer (grown
    by doubling: about three times the table at its peak), copies that into a bytes object and
    writes it to a temporary file for the engine to read (and map); for a 100,000-event batch
    that was about 160 MiB on top of the table. Here pyarrow writes the table's buffers
    straight to the file. The record batches stay the table's own, as ``insert_arrow`` sends
    them: ClickHouse derives a block's deduplication identity from the token *and* from how
    the rows arrived in chunks, so a batch replayed after a crash (maybe by an older version)
    must be cut the same.
    The engine reads the file with ``pread``: mapped, its pages would count in this process.
    The file is in ``spool`` beside the engine's folder, named by this process, so a process
    killed mid-insert leaves it where the next one removes it (``remove_orphaned_inserts``).
    """
    fd, path = tempfile.mkstemp(prefix=f"ep-insert-{os.getpid()}-", suffix=".arrows", dir=spool)
    os.close(fd)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        columns = ", ".join(quote_identifier(name) for name in data.column_names)
        clause = ", ".join(
            f"{name} = {_sql_string(str(value))}"
            for name, value in {"storage_file_read_method": "pread", **settings}.items()
        )
        client.command(
            f"INSERT INTO {table} ({columns}) FROM INFILE {_sql_string(path)} "
            f"SETTINGS {clause} FORMAT ArrowStream"
        )
    finally:
        os.unlink(path)


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_statements(sql: str) -> list[str]:
    """Statements of a DDL file: split on ``;`` at line ends, ``--`` comments dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


def platform_clickhouse(settings: Settings) -> ClickHouse:
    """The platform's ClickHouse (from settings), with the DDL in ``sql/clickhouse`` applied."""
    clickhouse = ClickHouse(
        settings.clickhouse_dsn,
        settings.clickhouse.database,
        settings.clickhouse.engine_malloc_conf,
    )
    clickhouse.apply_ddl(settings.paths.sql_dir / "clickhouse")
    return clickhouse
