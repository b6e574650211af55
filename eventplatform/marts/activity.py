"""Per-day user sets and the rolling activity state that active users and retention read.

Re-reading two months of the lake at every build made a day's cost grow with history. Instead,
each built day keeps two small Parquet files (both daily-partitioned assets):

- ``daily_users`` (``lake/marts_state/daily_users/date=D/``): the distinct (customer_id,
  user_id) of D's deduplicated events;
- ``user_activity`` (``lake/marts_state/user_activity/date=D/``): one row per (customer_id,
  user_id) active in the 63 days ending on D, with ``active_days``, a bitmap (UBIGINT) whose
  bit k is set when the user was active on D - k.

Day D's state is day D-1's shifted by one day plus D's users: one join of two tables of the
window's users, whatever the length of the history. The counts stay exact (user ids are kept,
not hashed). Each file records the lake fingerprints of the days it was computed from (its
Parquet key-value metadata); a file whose days' landed files changed since (late data, a
re-materialised day) is not used: the state is then rebuilt from the window's per-day sets,
and a day's set whose fingerprint is stale is recomputed from the lake.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from eventplatform.marts.inputs import LakeScanner

DAILY_USERS = "daily_users"
USER_ACTIVITY = "user_activity"
STATE_ASSETS = (DAILY_USERS, USER_ACTIVITY)
STATE_DIR = "marts_state"
WINDOW_DAYS = 63  # bits 0..62 of a UBIGINT: MAU's 30 days and 8 weeks of retention lookback
_MASK = (1 << WINDOW_DAYS) - 1
_META = b"eventplatform"

STATE_COLUMNS = {
    DAILY_USERS: {
        "customer_id": "The customer.",
        "user_id": "A user_id seen in the day's deduplicated events of the customer.",
    },
    USER_ACTIVITY: {
        "customer_id": "The customer.",
        "user_id": "A user active in the 63 days ending on the partition's day.",
        "active_days": "Bitmap: bit k set when the user was active on the day minus k days.",
    },
}
STATE_TYPES = {"customer_id": "string", "user_id": "string", "active_days": "uint64"}


def state_path(lake_dir: Path, asset: str, day: date) -> Path:
    return lake_dir / STATE_DIR / asset / f"date={day.isoformat()}" / "part-0.parquet"


def window(day: date) -> list[date]:
    """The days a state of ``day`` covers, oldest first."""
    return [day - timedelta(days=k) for k in range(WINDOW_DAYS - 1, -1, -1)]


def _recorded(path: Path) -> dict | None:
    """The inputs a state file was computed from (None: no usable file)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    raw = meta.get(_META)
    return json.loads(raw) if raw else None


def _copy(con: duckdb.DuckDBPyConnection, relation: str, path: Path, inputs: dict) -> int:
    """Write a relation to ``path`` atomically (temporary name, then rename), with its inputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    meta = json.dumps(inputs).replace("'", "''")
    try:
        con.execute(
            # zstd's level 1, as pyarrow writes the marts: the window's millions of users
            # written in 0.8x the CPU of DuckDB's default level 3, and a smaller file here
            f"COPY {relation} TO '{tmp}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, "
            f"KV_METADATA {{eventplatform: '{meta}'}})"
        ).fetchall()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]


class ActivityState:
    """Builds ``day_users`` and ``user_activity`` in a connection where ``events`` is the day's
    deduplicated events. ``day_events`` prepares another day's ``events`` relation (under a
    given name) when a per-day set has to be recomputed from the lake."""

    def __init__(self, lake_dir: Path, scanner: LakeScanner, day_events) -> None:
        self.lake_dir = lake_dir
        self.scanner = scanner
        self.day_events = day_events
        self.source = ""  # how the last state was made: "chained" or "rebuilt"
        self.recomputed: list[date] = []  # days whose user set was recomputed from the lake

    def prepare_day_users(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "CREATE TEMP TABLE day_users AS SELECT DISTINCT customer_id, user_id FROM events "
            "WHERE user_id IS NOT NULL"
        )

    def write_day_users(self, con, day: date) -> int:
        inputs = {"days": {day.isoformat(): self.scanner.day(day).fingerprint}}
        return _copy(con, "day_users", state_path(self.lake_dir, DAILY_USERS, day), inputs)

    def _valid(self, path: Path, days: list[date]) -> bool:
        recorded = _recorded(path)
        if recorded is None:
            return False
        seen = recorded.get("days", {})
        return all(seen.get(d.isoformat()) == self.scanner.day(d).fingerprint for d in days)

    def _users_of(self, con, day: date) -> str:
        """A relation with the distinct users of an earlier day: its file when current, else
        recomputed from the lake."""
        path = state_path(self.lake_dir, DAILY_USERS, day)
        if self._valid(path, [day]):
            return f"read_parquet('{path}')"
        if self.scanner.day(day).fingerprint == "empty":
            return "(SELECT NULL::VARCHAR AS customer_id, NULL::VARCHAR AS user_id LIMIT 0)"
        self.recomputed.append(day)
        name = f"_events_{day.strftime('%Y%m%d')}"
        self.day_events(con, self.scanner.day(day), name)
        return f"(SELECT DISTINCT customer_id, user_id FROM {name} WHERE user_id IS NOT NULL)"

    def prepare_activity(self, con: duckdb.DuckDBPyConnection, day: date) -> None:
        """``user_activity`` for ``day``: yesterday's state shifted, or rebuilt from the sets."""
        previous = day - timedelta(days=1)
        prev_path = state_path(self.lake_dir, USER_ACTIVITY, previous)
        if self._valid(prev_path, window(previous)[1:]):  # its oldest day falls out anyway
            self.source = "chained"
            con.execute(
                "CREATE TEMP TABLE user_activity AS SELECT customer_id, user_id, active_days "
                "FROM (SELECT customer_id, user_id, "
                f"((coalesce(p.active_days, 0::UBIGINT) << 1) & {_MASK}::UBIGINT) "
                "| (CASE WHEN t.user_id IS NULL THEN 0 ELSE 1 END)::UBIGINT AS active_days "
                f"FROM read_parquet('{prev_path}') AS p "
                "FULL JOIN day_users AS t USING (customer_id, user_id)) WHERE active_days <> 0"
            )
            return
        self.source = "rebuilt"
        parts = ["SELECT customer_id, user_id, 0 AS k FROM day_users"]
        for k, earlier in enumerate(reversed(window(day)[:-1]), start=1):
            users = self._users_of(con, earlier)
            parts.append(f"SELECT customer_id, user_id, {k} AS k FROM {users}")
        con.execute(
            "CREATE TEMP TABLE user_activity AS SELECT customer_id, user_id, "
            "bit_or(1::UBIGINT << k::UBIGINT) AS active_days FROM ("
            + " UNION ALL ".join(parts)
            + ") GROUP BY customer_id, user_id"
        )

    def write_activity(self, con, day: date) -> int:
        inputs = {"days": {d.isoformat(): self.scanner.day(d).fingerprint for d in window(day)}}
        return _copy(con, "user_activity", state_path(self.lake_dir, USER_ACTIVITY, day), inputs)
