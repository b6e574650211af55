"""Builds mart partitions in DuckDB over the Parquet lake.

For a day D the builder gives the mart SQL these relations (in an in-memory DuckDB):

- ``events_raw``: the day's landed rows as found in the lake (a replayed file or a retried
  send appears more than once), every landed column plus ``is_overflow`` (came through
  the overflow topic) and ``event_bytes`` (the row's uncompressed size);
- ``events``: the same, one row per ``(customer_id, event_id)`` (the first landed wins): event
  ids are the sender's, so two customers may both use "1", "2", ... and keep their events.
  Both are views over the day's Parquet files (see :func:`day_events`): each mart reads only
  the columns it uses; ``sum_event_bytes()`` in a mart is ``sum(event_bytes)``, cheaper;
- ``billed_events_raw``, ``billed_events``: the same with bots in (what a customer is billed
  for), and ``billed_events_repeated`` (customer_id, event_id of the raw rows whose key hash
  repeats: every row whose key repeats is among them);
- ``dead_letters``: the day's dead letters (``customer_id``, ``reason``, ``stage``, ``bytes``);
- ``day_users``: the distinct (customer_id, user_id) of ``events``;
- ``user_activity``: (customer_id, user_id, active_days) for the users active in the 63 days
  ending on D, bit k of ``active_days`` set when active on D - k (``eventplatform.marts.activity``:
  yesterday's state plus today's users, so the cost does not grow with history);
- ``funnel_steps`` (step, event_type) from settings, ``campaigns`` (campaign_id, advertiser, owner).

Each built partition is written three ways: a Parquet file per mart and day
(``lake/marts/<mart>/date=D/part-0.parquet``, atomic rename), the warehouse table (the day's
rows replaced in one transaction), and the ClickHouse mirror (the day's partition replaced).
Then the mart's reconciliations are evaluated against the day's events.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eventplatform.events.arrow import fixed_width, landed_schema, sent_fields
from eventplatform.kafka.dlq import DEAD_LETTER_SCHEMA
from eventplatform.marts.activity import (
    DAILY_USERS,
    STATE_ASSETS,
    USER_ACTIVITY,
    ActivityState,
    state_path,
)
from eventplatform.marts.catalog import Mart, load_marts
from eventplatform.marts.enriched import EMPTY_EVENTS, bot_filter, events_source
from eventplatform.marts.inputs import DayInputs, LakeScanner, history_days
from eventplatform.marts.native import NativeBuild, native_build

MARTS_DIR = "marts"


def event_bytes_sql() -> str:
    """The landed row's size as sent (``event_bytes``), computed from the fields sent: for
    files landed before the column existed, and as the reference the column is held to."""
    terms = []
    for f in sent_fields():
        if pa.types.is_string(f.type):
            terms.append(f'coalesce(strlen("{f.name}"), 0)')
        else:
            terms.append(f'CASE WHEN "{f.name}" IS NULL THEN 0 ELSE {fixed_width(f)} END')
    return " + ".join(terms)


def event_bytes_sum_sql() -> str:
    """``sum(event_bytes)`` as one aggregate per column (exactly the same total): far cheaper
    than the row expression, for a mart that sums the bytes of many rows."""
    terms = []
    for f in sent_fields():
        if pa.types.is_string(f.type):
            terms.append(f'coalesce(sum(strlen("{f.name}")), 0)')
        else:
            terms.append(f'{fixed_width(f)} * count("{f.name}")')
    return "(" + " + ".join(terms) + ")::BIGINT"


def expand(sql: str, sizes_landed: bool = False) -> str:
    """A mart's SQL with ``sum_event_bytes()`` written out (DuckDB macros cannot name columns):
    the landed ``event_bytes`` summed when every row of the day has it (``sizes_landed``),
    else the same total from the fields sent."""
    total = "sum(event_bytes)::BIGINT" if sizes_landed else event_bytes_sum_sql()
    return sql.replace("sum_event_bytes()", total)


def sizes_landed(con: duckdb.DuckDBPyConnection, files: Iterable[Path]) -> bool:
    """Whether every row of these files carries its ``event_bytes`` (landed since the column
    exists; a file compacted from older ones may have it null), from the files' footers."""
    paths = [str(p) for p in files]
    if not paths:
        return False
    row_groups, complete = con.execute(
        "SELECT count(DISTINCT (file_name, row_group_id)), count(DISTINCT (file_name, "
        "row_group_id)) FILTER (WHERE path_in_schema = 'event_bytes' AND stats_null_count = 0) "
        "FROM parquet_metadata($files)",
        {"files": paths},
    ).fetchall()[0]
    return row_groups > 0 and complete == row_groups


def landed_shape(files: Iterable[Path]) -> bool:
    """Whether every file has the landed columns, no other, in their order and types (from
    the footers). Then the day is read from its files alone, not beside an empty table of
    those columns (for files from before a column existed), and a count of its rows is
    the footers' instead of a read of a column (0.24 s CPU for 10 M rows)."""
    want = [(f.name, f.type) for f in landed_schema()]
    return all([(f.name, f.type) for f in pq.read_schema(p)] == want for p in files)


# A reconcile line's events side of the plain form "(SELECT <aggregate> FROM <relation>
# [WHERE <condition>])": such lines over the same relation are computed in one scan.
_SIMPLE_SIDE = re.compile(
    r"^\(SELECT (?P<agg>count\(\*\)|count\(DISTINCT [\w(), ]+\)|sum\(\w+\)"
    r"|coalesce\(sum\(\w+\), 0\)) FROM (?P<relation>\w+)"
    r"(?: WHERE (?P<condition>(?:(?!SELECT).)+))?\)$",
    re.DOTALL,
)


def _nested(text: str) -> bool:
    """Whether no parenthesis of ``text`` closes one opened before it (``a) + (b`` is not
    one condition). A parenthesis in a quoted string can only make a side fall back to being
    computed on its own."""
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def batched_sides(
    expressions: Iterable[str],
) -> tuple[dict[tuple[str, bool], dict[str, str]], list[str]]:
    """The plain events sides in batches of one scan, by (relation, distinct counts or not),
    each side as a filtered aggregate (``count(*) FILTER (WHERE c)`` is ``(SELECT count(*)
    FROM r WHERE c)``); and the sides that are not plain."""
    batches: dict[tuple[str, bool], dict[str, str]] = {}
    rest: list[str] = []
    for expression in dict.fromkeys(expressions):
        match = _SIMPLE_SIDE.match(expression)
        if match is None or not _nested(match.group("condition") or ""):
            rest.append(expression)
            continue
        agg, condition = match.group("agg"), match.group("condition")
        if condition:
            where = f" FILTER (WHERE {condition})"
            if agg.startswith("coalesce("):  # the filter goes on the aggregate inside
                agg = agg.replace(")", ")" + where, 1)
            else:
                agg += where
        # apart: a distinct count beside plain aggregates makes DuckDB keep the rows for both
        batch = (match.group("relation"), "DISTINCT" in agg)
        batches.setdefault(batch, {})[expression] = agg
    return batches, rest


def day_events(
    con: duckdb.DuckDBPyConnection,
    day: DayInputs,
    overflow_topic: str,
    include_bots: bool = False,
    name: str = "events",
    billed: str | None = None,
) -> bool:
    """The relations ``<name>_raw`` (``events_raw`` for ``events``: as landed) and ``<name>``
    (one row per customer_id and event_id, the first landed wins), as views over the day's
    Parquet files, so each mart reads only its own columns. Bots are left out of both unless
    ``include_bots`` (``eventplatform.marts.enriched``). With ``billed``, also ``<billed>_raw``
    and ``<billed>``: the same with bots in (what a customer is billed for), from the same pass,
    and ``<billed>_repeated``: the keys of the raw rows whose key hash is repeated (a superset
    of the rows whose key is), so a check can count distinct keys without grouping the day.

    Dedupe without a hash table of every id: the day's 64-bit hashes of (customer_id,
    event_id) are sorted once (cheaper than a hash table of them) to find the repeated ones
    (about 1 % of rows, and any hash collision);
    among those rows only, the exact ids decide, and the rows that lose are listed by file and
    row number. ``<name>`` is the landed rows minus that short list (an anti-join). The bots'
    rows are among the candidates, so the list without them is made from the same short table.

    Returns whether every row has its landed ``event_bytes`` (``sizes_landed``); when not, the
    relations' ``event_bytes`` is computed from the fields sent.
    """
    raw = "events_raw" if name == "events" else f"{name}_raw"
    landed, repeated = f"_landed_{name}", f"_repeated_{name}"
    con.register(EMPTY_EVENTS, landed_schema().empty_table())
    source = (
        f"(SELECT *, NULL::VARCHAR AS filename, NULL::BIGINT AS file_row_number "
        f"FROM {EMPTY_EVENTS})"
    )
    if day.events:
        files = "[" + ", ".join(_literal(str(p)) for p in day.events) + "]"
        scan = (
            f"read_parquet({files}, union_by_name = true, hive_partitioning = false, "
            "filename = true, file_row_number = true)"
        )
        source = f"(SELECT * FROM {scan})" if landed_shape(day.events) else events_source(scan)
    con.execute(f"CREATE TEMP VIEW {landed} AS SELECT * FROM {source}")
    con.execute(
        f"CREATE TEMP TABLE {repeated} AS SELECT filename, file_row_number, customer_id, "
        "event_id, coalesce(is_bot, false) AS is_bot, landed_ts, kafka_topic, kafka_partition, "
        f"kafka_offset FROM {landed} WHERE hash(customer_id, event_id) IN "
        "(SELECT key FROM (SELECT key, lag(key) OVER (ORDER BY key) AS previous FROM "
        f"(SELECT hash(customer_id, event_id) AS key FROM {landed})) WHERE key = previous)"
    )
    landed_sizes = sizes_landed(con, day.events)
    size = "" if landed_sizes else f", ({event_bytes_sql()})::BIGINT AS event_bytes"
    columns = (
        f"l.* EXCLUDE (filename, file_row_number{'' if landed_sizes else ', event_bytes'}), "
        f"l.kafka_topic = {_literal(overflow_topic)} AS is_overflow{size}, "
        f"DATE '{day.day.isoformat()}' AS event_date"
    )
    wanted = [(name, raw, include_bots)]
    if billed is not None:
        wanted.append((billed, f"{billed}_raw", True))
        # every row whose key is sent more than once is among these (equal keys, equal hashes)
        con.execute(
            f"CREATE TEMP VIEW {billed}_repeated AS SELECT customer_id, event_id FROM {repeated}"
        )
    for relation, relation_raw, bots in wanted:
        dropped = f"_dropped_{relation}"
        people = "" if bots else " WHERE NOT is_bot"
        con.execute(
            f"CREATE TEMP TABLE {dropped} AS SELECT filename, file_row_number FROM {repeated}"
            f"{people} QUALIFY row_number() OVER (PARTITION BY customer_id, event_id "
            "ORDER BY landed_ts, kafka_topic, kafka_partition, kafka_offset, filename, "
            "file_row_number) > 1"
        )
        rows = f"{landed} AS l" + bot_filter(bots, "l")
        con.execute(f"CREATE TEMP VIEW {relation_raw} AS SELECT {columns} FROM {rows}")
        con.execute(
            f"CREATE TEMP VIEW {relation} AS SELECT {columns} FROM {landed} AS l "
            f"ANTI JOIN {dropped} USING (filename, file_row_number)" + bot_filter(bots, "l")
        )
    return landed_sizes


@dataclass(frozen=True)
class ReconcileResult:
    expression: str
    mart_value: float | None
    events_value: float | None

    @property
    def passed(self) -> bool:
        a, b = self.mart_value or 0, self.events_value or 0
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)

    def __str__(self) -> str:
        mark = "ok" if self.passed else "MISMATCH"
        return f"{mark}: {self.expression}: mart {self.mart_value} vs events {self.events_value}"


@dataclass
class MartPartition:
    mart: str
    day: date
    rows: int
    fingerprint: str
    parquet_path: Path
    reconciliations: list[ReconcileResult] = field(default_factory=list)
    seconds: float = 0.0
    mirrored: bool = False

    @property
    def reconciled(self) -> bool:
        return all(r.passed for r in self.reconciliations)


class WarehouseBusy(RuntimeError):
    pass


class MartBuilder:
    """Builds marts for days. ``settings`` is the platform's :class:`Settings`."""

    def __init__(self, settings, marts: list[Mart] | None = None, clickhouse=None) -> None:
        self.settings = settings
        self.marts = marts if marts is not None else load_marts(settings.paths.sql_dir / "marts")
        self.by_name = {m.name: m for m in self.marts}
        self.lake_dir: Path = settings.lake_dir
        self.warehouse_path: Path = settings.warehouse_path
        self.clickhouse = clickhouse
        self.timings: dict[str, float] = {}  # seconds per stage of the last build_day
        self.state_parts: list[MartPartition] = []  # the state assets the last build wrote
        self.activity: ActivityState | None = None  # how the last build made its state
        self.built_natively: dict[str, bool] = {}  # per mart of the last build

    # -- the day's relations -------------------------------------------------------------

    def _connect(self, spill: bool = True) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(config={"memory_limit": self.settings.marts.duckdb_memory_limit})
        if spill:  # big days spill to disk instead of failing
            tmp = self.settings.data_dir / "duckdb_tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET temp_directory = '{tmp}'")
        con.execute("SET TimeZone = 'UTC'")
        return con

    def _prepare(self, con: duckdb.DuckDBPyConnection, day: DayInputs) -> bool:
        """The day's relations; returns whether its rows carry their sizes (``expand``)."""
        overflow = self.settings.kafka.overflow_topic
        # What a customer is billed for is everything it sent, bots too (customer_usage_daily)
        landed_sizes = day_events(
            con, day, overflow, self.settings.marts.include_bots, billed="billed_events"
        )
        if day.dead_letters:
            con.execute(
                "CREATE TEMP TABLE dead_letters AS SELECT customer_id, reason, stage, "
                "octet_length(value)::BIGINT AS bytes FROM read_parquet($files, "
                "union_by_name = true, hive_partitioning = false)",
                {"files": [str(p) for p in day.dead_letters]},
            )
        else:
            con.register("_empty_dead", DEAD_LETTER_SCHEMA.empty_table())
            con.execute(
                "CREATE TEMP TABLE dead_letters AS SELECT customer_id, reason, stage, "
                "0::BIGINT AS bytes FROM _empty_dead"
            )
        steps = self.settings.marts.funnel
        con.register(
            "funnel_steps",
            pa.table({"step": list(range(1, len(steps) + 1)), "event_type": steps}),
        )
        con.register("campaigns", self._campaigns())
        return landed_sizes

    def _activity(self, scanner: LakeScanner) -> ActivityState:
        overflow, bots = self.settings.kafka.overflow_topic, self.settings.marts.include_bots
        return ActivityState(
            self.lake_dir,
            scanner,
            lambda con, d, name: day_events(con, d, overflow, bots, name),
        )

    def _campaigns(self) -> pa.Table:
        """campaign_id -> advertiser and owner (the customer whose campaign it is), from
        ClickHouse's campaigns table (empty without it)."""
        rows: list[tuple] = []
        if self.clickhouse is not None:
            with self.clickhouse.session() as client:
                rows = client.query(
                    f"SELECT campaign_id, argMax(advertiser, version), argMax(owner, version) "
                    f"FROM {self.clickhouse.database}.campaigns GROUP BY campaign_id"
                ).result_rows
        return pa.table(
            {
                name: pa.array([r[i] for r in rows], pa.string())
                for i, name in enumerate(("campaign_id", "advertiser", "owner"))
            }
        )

    def _params(self, sql: str, day: date) -> dict[str, object]:
        available = {"event_date": day, "retention_weeks": self.settings.marts.retention_weeks}
        return {k: v for k, v in available.items() if f"${k}" in sql}

    # -- building ------------------------------------------------------------------------

    def select(self, names: Iterable[str] | None) -> list[Mart]:
        if names is None:
            return list(self.marts)
        names = [n for n in names if n not in STATE_ASSETS]
        unknown = [n for n in names if n not in self.by_name]
        if unknown:
            raise KeyError(f"unknown mart(s) {unknown}; known: {sorted(self.by_name)}")
        return [m for m in self.marts if m.name in names]

    def _state_wanted(self, names: Iterable[str] | None) -> set[str]:
        return set(STATE_ASSETS) if names is None else {n for n in names if n in STATE_ASSETS}

    def _prepare_state(
        self, con, day: date, scanner: LakeScanner, marts: list[Mart], state: set[str]
    ) -> ActivityState:
        """``day_users`` and ``user_activity`` when a selected mart or state asset needs them
        (empty tables otherwise, so every mart's SQL binds)."""
        activity = self.activity = self._activity(scanner)
        needs_activity = USER_ACTIVITY in state or any(m.reads_history for m in marts)
        if needs_activity or DAILY_USERS in state:
            activity.prepare_day_users(con)
        else:
            con.execute("CREATE TEMP TABLE day_users (customer_id VARCHAR, user_id VARCHAR)")
        if needs_activity:
            activity.prepare_activity(con, day)
        else:
            con.execute(
                "CREATE TEMP TABLE user_activity "
                "(customer_id VARCHAR, user_id VARCHAR, active_days UBIGINT)"
            )
        return activity

    def _native_builds(self, marts: list[Mart], day: DayInputs) -> dict[str, NativeBuild]:
        """The marts a native build may take on this day: on, one written for the mart's SQL,
        and the day small enough to hold in memory (its landed rows, from the files' footers,
        read only when some mart has a native build)."""
        m = self.settings.marts
        builds = {mart.name: build for mart in marts if (build := native_build(mart))}
        if not builds or not m.native_sessions:
            return {}
        rows = sum(pq.read_metadata(p).num_rows for p in day.events)
        return builds if rows <= m.native_sessions_max_rows else {}

    def compute_day(
        self, day: date, names: Iterable[str] | None = None, write_state: bool = False
    ) -> dict[str, tuple[pa.Table, MartPartition]]:
        """The marts of one day computed (nothing written yet but, with ``write_state``, the
        day's user set and activity state), with their reconciliations."""
        names = list(names) if names is not None else None
        marts = self.select(names)
        state = self._state_wanted(names)
        weeks = self.settings.marts.retention_weeks
        scanner = LakeScanner(self.lake_dir)
        today = scanner.day(day)
        out: dict[str, tuple[pa.Table, MartPartition]] = {}
        self.state_parts = []
        con = self._connect()
        try:
            start = time.perf_counter()
            landed_sizes = self._prepare(con, today)
            activity = self._prepare_state(con, day, scanner, marts, state)
            self.timings["prepare"] = time.perf_counter() - start
            start = time.perf_counter()
            if write_state and activity.source:  # the state was computed: keep it
                written = {
                    DAILY_USERS: activity.write_day_users(con, day),
                    USER_ACTIVITY: activity.write_activity(con, day),
                }
                for name in sorted(state):
                    self.state_parts.append(
                        MartPartition(
                            mart=name,
                            day=day,
                            rows=written[name],
                            fingerprint=scanner.fingerprint(day, name == USER_ACTIVITY, weeks),
                            parquet_path=state_path(self.lake_dir, name, day),
                            seconds=time.perf_counter() - start,
                        )
                    )
            elif write_state and DAILY_USERS in state:
                rows = activity.write_day_users(con, day)
                self.state_parts.append(
                    MartPartition(
                        DAILY_USERS,
                        day,
                        rows,
                        scanner.fingerprint(day, False, weeks),
                        state_path(self.lake_dir, DAILY_USERS, day),
                        seconds=time.perf_counter() - start,
                    )
                )
            self.timings["state"] = time.perf_counter() - start
            cache = self._events_sides(con, marts, day)
            natives = self._native_builds(marts, today)
            self.built_natively = {}
            for mart in marts:
                start = time.perf_counter()
                sql = expand(mart.sql, landed_sizes)
                table = None
                if native := natives.get(mart.name):
                    table = native(con, day)  # None: a day it does not take (then the SQL)
                self.built_natively[mart.name] = table is not None
                if table is None:
                    table = con.sql(sql, params=self._params(sql, day)).to_arrow_table()
                part = MartPartition(
                    mart=mart.name,
                    day=day,
                    rows=table.num_rows,
                    fingerprint=scanner.fingerprint(day, mart.reads_history, weeks),
                    parquet_path=self.parquet_path(mart.name, day),
                )
                part.reconciliations = self._reconcile(con, mart, table, day, cache)
                part.seconds = time.perf_counter() - start
                out[mart.name] = (table, part)
        finally:
            con.close()
        return out

    def _events_sides(self, con, marts: list[Mart], day: date) -> dict[str, float | None]:
        """The events side of every reconcile line of ``marts``: the plain ones in one scan
        per relation (each would otherwise read the day again), the others on their own
        when a mart is reconciled."""
        batches, _ = batched_sides(r.events_expr for m in marts for r in m.reconciliations)
        sides: dict[str, float | None] = {}
        for (relation, _), aggregates in batches.items():
            columns = ", ".join(f"({agg})::DOUBLE" for agg in aggregates.values())
            sql = f"SELECT {columns} FROM {relation}"
            row = con.execute(sql, self._params(sql, day)).fetchall()[0]
            sides.update(zip(aggregates, row, strict=True))
        return sides

    def _reconcile(
        self, con, mart: Mart, table: pa.Table, day: date, cache: dict | None = None
    ) -> list[ReconcileResult]:
        """Each reconcile line's two sides. ``cache`` keeps the events' side of a build, so a
        figure that two marts reconcile with (the day's event count, its revenue) is
        computed once."""
        cache = {} if cache is None else cache
        con.register("mart", table)
        results = []
        try:
            for rec in mart.reconciliations:
                left = con.execute(
                    f"SELECT ({rec.mart_expr})::DOUBLE FROM mart", self._params(rec.mart_expr, day)
                ).fetchall()[0][0]
                if rec.events_expr not in cache:
                    cache[rec.events_expr] = con.execute(
                        f"SELECT ({rec.events_expr})::DOUBLE", self._params(rec.events_expr, day)
                    ).fetchall()[0][0]
                right = cache[rec.events_expr]
                results.append(
                    ReconcileResult(f"{rec.mart_expr} == {rec.events_expr}", left, right)
                )
        finally:
            con.unregister("mart")
        return results

    def reconcile_stored(self, day: date, names: Iterable[str]) -> dict[str, list[ReconcileResult]]:
        """The warehouse's rows of the day (as stored) against the day's events (as landed now).

        What the check reports when it runs alone: it fails when the stored day was altered,
        or when events landed after it was built (until the rebuild).
        """
        marts = self.select(names)
        scanner = LakeScanner(self.lake_dir)
        stored: dict[str, pa.Table] = {}
        with self.warehouse(read_only=True) as warehouse:
            for mart in marts:
                stored[mart.name] = warehouse.sql(
                    f'SELECT * FROM "{mart.name}" WHERE event_date = $d', params={"d": day}
                ).to_arrow_table()
        con = self._connect()
        try:
            self._prepare(con, scanner.day(day))
            self._prepare_state(con, day, scanner, marts, set())
            cache = self._events_sides(con, marts, day)
            return {m.name: self._reconcile(con, m, stored[m.name], day, cache) for m in marts}
        finally:
            con.close()

    def build_day(self, day: date, names: Iterable[str] | None = None) -> list[MartPartition]:
        """Compute, then write Parquet, the warehouse and the ClickHouse mirror for one day.

        ``names`` None builds every mart (and the user set and activity state they read);
        the state assets' partitions are in the result only when named."""
        names = list(names) if names is not None else None
        self.timings = {}
        start = time.perf_counter()
        computed = self.compute_day(day, names, write_state=True)
        self.timings["marts"] = (
            time.perf_counter() - start - self.timings["prepare"] - self.timings["state"]
        )
        start = time.perf_counter()
        for table, part in computed.values():
            write_parquet(part.parquet_path, table)
        self.timings["parquet"] = time.perf_counter() - start
        start = time.perf_counter()
        self.load_warehouse(day, {name: table for name, (table, _) in computed.items()})
        self.timings["warehouse"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.clickhouse is not None:
            from eventplatform.marts.mirror import mirror_day

            with self.clickhouse.session():  # the engine opened once for every mart's copy
                for name, (table, part) in computed.items():
                    mirror_day(self.clickhouse, self.by_name[name], day, table, part.parquet_path)
                    part.mirrored = True
                    part.reconciliations.extend(self.compare_mirror(name, day, table))
        self.timings["clickhouse"] = time.perf_counter() - start
        # the state assets are returned when asked for by name (written whenever computed)
        named = set(names or ()) & set(STATE_ASSETS)
        return [part for _, part in computed.values()] + [
            p for p in self.state_parts if p.mart in named
        ]

    def compare_mirror(self, name: str, day: date, table: pa.Table) -> list[ReconcileResult]:
        """The ClickHouse copy of the day has the same rows and column sums as the build."""
        from eventplatform.marts.mirror import partition_totals

        numeric = [
            f.name
            for f in table.schema
            if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
        ]
        rows, sums = partition_totals(self.clickhouse, self.by_name[name], day, numeric)
        results = [ReconcileResult("clickhouse count(*) == duckdb count(*)", rows, table.num_rows)]
        for column in numeric:
            built = pc.sum(table.column(column)).as_py() or 0
            results.append(
                ReconcileResult(
                    f"clickhouse sum({column}) == duckdb sum({column})", sums[column], built
                )
            )
        return results

    def build_range(
        self, start: date, end: date, names: Iterable[str] | None = None
    ) -> Iterator[MartPartition]:
        day = start
        while day <= end:
            yield from self.build_day(day, names)
            day = date.fromordinal(day.toordinal() + 1)

    def parquet_path(self, mart: str, day: date) -> Path:
        return self.lake_dir / MARTS_DIR / mart / f"date={day.isoformat()}" / "part-0.parquet"

    # -- the warehouse -------------------------------------------------------------------

    @contextmanager
    def warehouse(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse file, under an inter-process lock for writers (retried while busy)."""
        self.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.warehouse_path.with_name(self.warehouse_path.name + ".lock")
        deadline = time.monotonic() + self.settings.marts.lock_timeout_s
        with open(lock_path, "a") as lock_file:
            if not read_only:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                while True:
                    try:
                        con = duckdb.connect(str(self.warehouse_path), read_only=read_only)
                        break
                    except duckdb.IOException as exc:  # another process holds the file
                        if time.monotonic() > deadline:
                            raise WarehouseBusy(
                                f"{self.warehouse_path} is locked by another process ({exc}); "
                                "open it read-only (duckdb -readonly) while marts build"
                            ) from exc
                        time.sleep(0.5)
                try:
                    yield con
                finally:
                    con.close()
            finally:
                if not read_only:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def load_warehouse(self, day: date, tables: dict[str, pa.Table]) -> None:
        """Replace the day's rows of each mart's table in one transaction."""
        with self.warehouse() as con:
            # A table's rows have no order: without keeping the insert's, DuckDB writes the big
            # days' row groups straight to the file instead of again at the checkpoint (half
            # the CPU, measured on the sessions mart's 1.2 M rows)
            con.execute("SET preserve_insertion_order = false")
            for name, table in tables.items():
                self._ensure_table(con, self.by_name[name], table.schema, day)
            con.execute("BEGIN TRANSACTION")
            try:
                for name, table in tables.items():
                    con.execute(f'DELETE FROM "{name}" WHERE event_date = $d', {"d": day})
                    con.register("_incoming", table)
                    con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM _incoming')
                    con.unregister("_incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _ensure_table(self, con, mart: Mart, schema: pa.Schema, replaced: date) -> None:
        existing = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $t "
            "ORDER BY ordinal_position",
            {"t": mart.name},
        ).fetchall()
        if [c for (c,) in existing] == schema.names:
            return
        # New, or its columns changed: rebuild it from the Parquet exports (the record), but
        # for the day being replaced (its rows are loaded next).
        con.register("_shape", schema.empty_table())
        con.execute(f'CREATE OR REPLACE TABLE "{mart.name}" AS SELECT * FROM _shape')
        con.unregister("_shape")
        exported = self.lake_dir / MARTS_DIR / mart.name
        files = sorted(
            str(p)
            for p in exported.glob("date=*/part-0.parquet")
            if p.parent.name != f"date={replaced.isoformat()}"
        )
        for path in files:
            if pq.read_schema(path).names == schema.names:
                con.execute(
                    f'INSERT INTO "{mart.name}" SELECT * FROM read_parquet($f, '
                    "hive_partitioning = false)",
                    {"f": path},
                )
        con.execute(f"COMMENT ON TABLE \"{mart.name}\" IS '{_quote(mart.description)}'")
        for column, description in mart.columns.items():
            if column in schema.names:
                con.execute(
                    f'COMMENT ON COLUMN "{mart.name}"."{column}" IS \'{_quote(description)}\''
                )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(text: str) -> str:
    return text.replace("'", "''")


def write_parquet(path: Path, table: pa.Table) -> None:
    """Atomically (temporary name in the same folder, then rename): readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_SCHEMAS: dict[tuple, pa.Schema] = {}
_EMPTY_DAYS: dict[tuple, tuple[MartBuilder, duckdb.DuckDBPyConnection]] = {}
_SCHEMA_LOCK = threading.Lock()


def output_schema(settings, mart: Mart) -> pa.Schema:
    """The mart's columns and types, from running its SQL over empty inputs: once per process
    for the same SQL and the settings it reads, over one prepared empty day (the definitions
    and every run ask for every mart's; preparing a day per mart cost 0.3 s each)."""
    m = settings.marts
    inputs = (settings.kafka.overflow_topic, tuple(m.funnel), m.retention_weeks)
    with _SCHEMA_LOCK:
        if (mart.sql, *inputs) not in _SCHEMAS:
            if inputs not in _EMPTY_DAYS:
                builder = MartBuilder(settings, [])
                con = builder._connect(spill=False)
                empty = DayInputs(date(2000, 1, 3), (), (), "empty")
                builder._prepare(con, empty)
                builder._prepare_state(con, empty.day, LakeScanner(builder.lake_dir), [], set())
                _EMPTY_DAYS[inputs] = builder, con
            builder, con = _EMPTY_DAYS[inputs]
            sql = expand(mart.sql)
            params = builder._params(sql, date(2000, 1, 3))
            _SCHEMAS[(mart.sql, *inputs)] = con.sql(sql, params=params).to_arrow_table().schema
        return _SCHEMAS[(mart.sql, *inputs)]


__all__ = ["MartBuilder", "MartPartition", "ReconcileResult", "history_days", "output_schema"]
