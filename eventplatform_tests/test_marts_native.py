"""The native sessions grouping gives exactly the rows of the mart's SQL.

``sql/marts/sessions_daily.sql`` is the definition; ``eventplatform/marts/native.py`` (and
``native/avro_columnar/src/sessions.rs``) must give the same table, column for column and in
the same order, on any day: the days here are written straight into DuckDB (not through the
contract) so they can hold what a hostile or broken sender might get through, and through the
lake and the builder for the path a build takes.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eventplatform_avro import format_ms_times

from eventplatform.marts.build import MartBuilder
from eventplatform.marts.catalog import parse_mart
from eventplatform.marts.native import IMPLEMENTS, native_build, sessions_daily, sql_hash
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.test_marts_equivalence import _land

DAY = date(2026, 11, 16)
MIDNIGHT = datetime(2026, 11, 16, tzinfo=UTC)
MART = parse_mart(REPO_ROOT / "sql" / "marts" / "sessions_daily.sql")
COLUMNS = (
    "customer_id VARCHAR, session_id VARCHAR, user_id VARCHAR, event_ts TIMESTAMPTZ, "
    "event_type VARCHAR, url VARCHAR, utm_source VARCHAR, referrer_class VARCHAR, "
    "geo_country VARCHAR, device_class VARCHAR"
)


def _events(rows: list[tuple]) -> duckdb.DuckDBPyConnection:
    """A connection whose ``events`` holds these rows (the columns of ``COLUMNS``)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE events ({COLUMNS})")
    if rows:
        con.executemany(f"INSERT INTO events VALUES ({', '.join('?' * 10)})", rows)
    return con


def _both(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, pa.Table]:
    by_sql = con.sql(MART.sql, params={"event_date": DAY}).to_arrow_table()
    native = sessions_daily(con, DAY)
    assert native is not None
    return by_sql, native


def _hostile_day(seed: int, rows: int) -> list[tuple]:
    """Customers that share ids and name prefixes, session ids shaped like the mart's visit
    keys and longer than the sort's 16-byte prefix, empty and non-ASCII ids, users with and
    without session ids, gaps at exactly 30 minutes, and no two events of a day at the same
    time (which row SQL's arg_min picks among tied times is not defined)."""
    rng = random.Random(seed)
    customers = ["shop", "shop2", "sho", "news", "ünï", ""]
    users = [f"u{n}" for n in range(30)] + ["", "ü", "u1#1", "x" * 40 + "1", "x" * 40 + "2"]
    sessions = [f"s{n}" for n in range(40)] + ["u1#1", "u2#2", "u1#10", "", "y" * 20 + "a"]
    sessions += ["y" * 20 + "b", "ü#1"]
    times = rng.sample(range(0, 86_400_000, 7), rows)  # distinct
    gap = 30 * 60 * 1000
    out = []
    for n, ms in enumerate(times):
        customer = rng.choice(customers)
        user = rng.choice(users + [None] * 8)
        session = rng.choice(sessions + [None] * 40)
        if n % 20 == 0 and n:  # the last user's next event 30 minutes (or 1 ms less) later
            customer, user, session = out[-1][0], out[-1][2] or "u1", None
            ms = min(out[-1][3] + gap - rng.choice([0, 1]), 86_399_999)
        event_type = rng.choice(["page_view", "page_view", "click", "signup", "purchase"])
        pick = lambda values: rng.choice([*values, None])  # noqa: E731
        out.append(
            (
                customer,
                session,
                user,
                ms,
                event_type,
                pick([f"https://a.example/{k}" for k in range(9)]),
                pick(["google", "newsletter"]),
                pick(["search", "social", "direct"]),
                pick(["DE", "FR", "US"]),
                pick(["desktop", "mobile"]),
            )
        )
    # ms -> timestamps; rows with neither id are in no session
    return [
        (*r[:3], datetime.fromtimestamp((MIDNIGHT.timestamp() * 1000 + r[3]) / 1000, UTC), *r[4:])
        for r in out
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_sessions_equal_the_sql_on_a_hostile_day(seed: int) -> None:
    con = _events(_hostile_day(seed, 4000))
    by_sql, native = _both(con)
    assert by_sql.num_rows > 1000
    keys = set(by_sql["session_key"].to_pylist())
    assert {"u1#1", "u1#2"} <= keys  # a sent session id and a user's visit keys, one group
    assert any(k.endswith("#2") for k in keys)  # visits cut by the 30 minutes
    assert native.schema == by_sql.schema
    assert native.equals(by_sql)


def test_native_sessions_merge_a_sent_session_id_with_the_visit_it_reads_like() -> None:
    at = lambda hh_mm: MIDNIGHT + timedelta(hours=int(hh_mm[:2]), minutes=int(hh_mm[3:]))  # noqa: E731
    row = lambda c, s, u, t, url: (c, s, u, at(t), "page_view", url, None, None, None, None)  # noqa: E731
    con = _events(
        [
            row("shop", None, "u1", "09:00", "https://a/1"),  # u1's first visit: u1#1
            row("shop", None, "u1", "09:10", "https://a/2"),
            row("shop", "u1#1", "u0", "08:00", "https://a/0"),  # a sent id that reads u1#1
            row("shop", None, "u1", "10:00", "https://a/3"),  # 50 minutes later: u1#2
            row("news", "u1#1", "u9", "07:00", "https://n/1"),  # another customer: apart
            row("shop", None, None, "11:00", "https://a/4"),  # neither id: in no session
        ]
    )
    by_sql, native = _both(con)
    assert native.equals(by_sql)
    assert native.select(
        ["customer_id", "session_key", "user_id", "events", "entry_url"]
    ).to_pylist() == [
        {
            "customer_id": "news",
            "session_key": "u1#1",
            "user_id": "u9",
            "events": 1,
            "entry_url": "https://n/1",
        },
        {
            "customer_id": "shop",
            "session_key": "u1#1",
            "user_id": "u0",
            "events": 3,
            "entry_url": "https://a/0",
        },
        {
            "customer_id": "shop",
            "session_key": "u1#2",
            "user_id": "u1",
            "events": 1,
            "entry_url": "https://a/3",
        },
    ]


def test_a_day_without_sessions_gives_the_empty_table() -> None:
    con = _events([])
    by_sql, native = _both(con)
    assert native.num_rows == 0 and native.schema == by_sql.schema


def test_the_native_build_is_for_the_sql_it_was_written_for() -> None:
    assert sql_hash(MART.sql) == IMPLEMENTS, (
        "sql/marts/sessions_daily.sql changed: bring eventplatform/marts/native.py in line "
        "(these tests compare the two), then set IMPLEMENTS to the new hash"
    )
    assert native_build(MART) is sessions_daily
    changed = dataclasses.replace(MART, sql=MART.sql.replace("30 MINUTE", "20 MINUTE"))
    assert native_build(changed) is None  # a changed definition is built by its SQL


def test_the_builder_writes_the_same_sessions_with_or_without_the_native_build(
    mart_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    events = [
        decoded_event(
            rng.choice(["page_view", "click", "signup"]),
            rng.choice(["shop", "news"]),
            MIDNIGHT + timedelta(milliseconds=ms),
            user_id=rng.choice([f"u{rng.randrange(20)}", None]),
            session_id=rng.choice([f"s{rng.randrange(30)}", None, None]),
            event_id=f"e{n}",
            event_ts=int(MIDNIGHT.timestamp() * 1000) + ms,
        )
        for n, ms in enumerate(rng.sample(range(0, 86_400_000, 11), 3000))
    ]
    events += events[:40]  # resent: the dedupe happens before the sessions
    _land(mart_env, events, [False] * len(events), 0)
    tables, natively = {}, {}
    for native, max_rows in ((True, 10_000), (False, 10_000), (True, len(events) - 1)):
        monkeypatch.setenv("EP_MARTS_NATIVE_SESSIONS", str(native).lower())
        monkeypatch.setenv("EP_MARTS_NATIVE_SESSIONS_MAX_ROWS", str(max_rows))
        builder = MartBuilder(Settings(), [MART])
        parts = builder.build_day(DAY)
        assert [p.reconciled for p in parts] == [True]
        natively[native, max_rows] = builder.built_natively[MART.name]
        tables[native, max_rows] = pq.read_table(builder.parquet_path(MART.name, DAY))
    # on; off; on, but the day has more landed rows than the native build may hold
    assert list(natively.values()) == [True, False, False]
    assert tables[True, 10_000].num_rows > 100
    assert tables[True, 10_000].equals(tables[False, 10_000])
    assert tables[True, 10_000].equals(tables[True, len(events) - 1])


def test_times_are_written_as_strftime_writes_them_on_any_day() -> None:
    rng = random.Random(5)
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999000, UTC)
    bounds = (int(first.timestamp() * 1000), int(last.timestamp() * 1000))
    edges = [0, -1, 86_399_999, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, *bounds]
    times = edges + [rng.randrange(*bounds) for _ in range(20_000)]  # leap days 2000, 2100
    text = format_ms_times(memoryview(np.array(times, dtype=np.int64)).cast("B"), len(times))
    assert text is not None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    written = con.execute(  # what the SQL writes: strftime of a TIMESTAMPTZ
        "SELECT strftime(epoch_ms(t)::TIMESTAMPTZ, '%Y-%m-%d %H:%M:%S.%g') FROM unnest($t) AS u(t)",
        {"t": times},
    ).fetchall()
    expected = "".join(w for (w,) in written)
    assert bytes(text).decode() == expected
    # outside years 0000-9999 the SQL's DuckDB writes them
    past = bounds[1] + 86_400_000  # 10000-01-01
    assert format_ms_times(memoryview(np.array([past], dtype=np.int64)).cast("B"), 1) is None
