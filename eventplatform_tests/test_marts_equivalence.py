"""The marts' cheaper formulations give exactly what their plain definitions give.

The builder shares work between relations (one dedupe pass for the marts' events and the
billed events) and ``sessions_daily`` orders only the events that need ordering. These tests
build days that stress the difference (repeated ids where a bot's copy lands first, events
with and without session ids from the same users, timestamp ties, session ids that look like
the keys the mart makes) and compare with the definitions written the plain way.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eventplatform.enrich import Enricher, Reference
from eventplatform.events.arrow import events_to_arrow, landed_schema
from eventplatform.land.lake import OffsetRange, write_events
from eventplatform.marts.build import (
    MartBuilder,
    batched_sides,
    event_bytes_sql,
    expand,
    landed_shape,
    sizes_landed,
)
from eventplatform.marts.inputs import LakeScanner
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event
from eventplatform_tests.marts_data import D1, make_lake

DAY = date(2026, 11, 16)
MIDNIGHT = datetime(2026, 11, 16, tzinfo=UTC)

# sessions_daily as first written: one window over every event of a user, in time order.
SESSIONS_BY_ONE_WINDOW = """
WITH visits AS (
    SELECT *,
        CASE WHEN session_id IS NULL THEN
            coalesce(event_ts - lag(event_ts) OVER (
                PARTITION BY customer_id, user_id, session_id IS NULL ORDER BY event_ts, event_id
            ) >= INTERVAL 30 MINUTE, true)
        END AS starts_visit
    FROM events
    WHERE session_id IS NOT NULL OR user_id IS NOT NULL
),
keyed AS (
    SELECT *,
        coalesce(session_id, user_id || '#' || sum(starts_visit::INTEGER) OVER (
            PARTITION BY customer_id, user_id, session_id IS NULL ORDER BY event_ts, event_id
            ROWS UNBOUNDED PRECEDING
        )) AS session_key
    FROM visits
)
SELECT
    $event_date::DATE AS event_date, customer_id, session_key, min(user_id) AS user_id,
    strftime(min(event_ts), '%Y-%m-%d %H:%M:%S.%g') AS started_ts,
    strftime(max(event_ts), '%Y-%m-%d %H:%M:%S.%g') AS ended_ts,
    round(epoch(max(event_ts)) - epoch(min(event_ts)), 3) AS length_s,
    count(*) AS events,
    count(*) FILTER (WHERE event_type = 'page_view') AS pages,
    coalesce(arg_min(url, event_ts) FILTER (WHERE event_type = 'page_view'),
        arg_min(url, event_ts) FILTER (WHERE url IS NOT NULL)) AS entry_url,
    coalesce(arg_max(url, event_ts) FILTER (WHERE event_type = 'page_view'),
        arg_max(url, event_ts) FILTER (WHERE url IS NOT NULL)) AS exit_url,
    arg_min(utm_source, event_ts) FILTER (WHERE utm_source IS NOT NULL) AS utm_source,
    arg_min(referrer_class, event_ts) FILTER (WHERE referrer_class IS NOT NULL)
        AS referrer_class,
    arg_min(geo_country, event_ts) FILTER (WHERE geo_country IS NOT NULL) AS country,
    arg_min(device_class, event_ts) FILTER (WHERE device_class IS NOT NULL) AS device_class
FROM keyed
GROUP BY customer_id, session_key
"""


def _land(settings: Settings, events: list[dict], bots: list[bool], first_offset: int) -> None:
    offsets = list(range(first_offset, first_offset + len(events)))
    table = events_to_arrow(events, "events.raw", 0, offsets, int(MIDNIGHT.timestamp() * 1000))
    table = Enricher(Reference()).enrich(table)  # utm_source, country, device class ...
    table = table.set_column(
        landed_schema().get_field_index("is_bot"), "is_bot", pa.array(bots, pa.bool_())
    )
    write_events(settings.lake_dir, table, [OffsetRange("events.raw", 0, offsets[0], offsets[-1])])


def _day(settings: Settings):
    builder = MartBuilder(settings)
    con = builder._connect(spill=False)
    builder._prepare(con, LakeScanner(settings.lake_dir).day(DAY))
    return builder, con


def test_sessions_equal_one_window_over_every_event(mart_env: Settings) -> None:
    rng = random.Random(16)
    events = []
    for n in range(1500):
        user = rng.choice([f"u{rng.randrange(40)}", None])
        # sent session ids: real ones, none, and ones shaped like the keys the mart makes
        session = rng.choice([f"s{rng.randrange(60)}", None, None, f"u{rng.randrange(40)}#1"])
        minute = rng.randrange(0, 24 * 60, 5)  # coarse: many events share a timestamp
        when = MIDNIGHT + timedelta(minutes=minute)
        # what arg_min picks among tied events must not depend on the order: tied, the same
        url = f"https://shop.example/p/{minute % 13}?utm_source=src{minute % 3}"
        event_type = rng.choice(["page_view", "page_view", "click", "signup"])
        events.append(
            decoded_event(
                event_type,
                rng.choice(["shop", "news"]),
                when,
                payload={"url": url} if event_type in ("page_view", "click") else None,
                user_id=user,
                session_id=session,
                event_id=f"e{n}",
                ip=f"81.2.69.{minute % 200}",
            )
        )
    # at the edges of the half hours the mart groups id-less events by: gaps of 1 ms, just
    # under 30 minutes and exactly 30 minutes, within one half hour and across two
    edges = [
        "00:29:59.999",
        "00:30:00.000",
        "01:00:00.000",
        "01:30:00.000",
        "02:10:00.000",
        "02:39:59.999",
        "03:00:00.000",
        "03:29:59.999",
        "04:15:00.000",
        "04:45:00.000",
    ]
    for k, clock in enumerate(edges):
        when = datetime.fromisoformat(f"2026-11-16T{clock}+00:00")
        events.append(
            decoded_event(
                "page_view",
                "shop",
                when,
                user_id="edge",
                session_id=None,
                event_id=f"edge{k}",
                event_ts=int(when.timestamp() * 1000),
            )
        )
    _land(mart_env, events, [False] * len(events), 0)
    builder, con = _day(mart_env)
    mart = expand(builder.by_name["sessions_daily"].sql)
    params = {"event_date": DAY}
    built = con.sql(mart, params=params).fetchall()
    reference = con.sql(SESSIONS_BY_ONE_WINDOW, params=params).fetchall()
    con.close()
    assert len(built) > 300
    assert any("#" in row[2] and not row[2].endswith("#1") for row in built)  # gap sessions
    assert sorted(built, key=repr) == sorted(reference, key=repr)
    edge_visits = sorted((r[2], r[7]) for r in built if r[1] == "shop" and r[3] == "edge")
    assert edge_visits == [
        ("edge#1", 2),
        ("edge#2", 1),
        ("edge#3", 1),
        ("edge#4", 4),
        ("edge#5", 1),
        ("edge#6", 1),
    ]


def test_one_dedupe_pass_serves_the_marts_events_and_the_billed_events(
    mart_env: Settings,
) -> None:
    """An id sent by a bot first and by a person later: the marts (people only) keep the
    person's copy, the bill keeps the first landed, which is the bot's."""
    when = MIDNIGHT + timedelta(hours=9)
    sent = [
        ("a", "shop", True),  # bot first ...
        ("a", "shop", False),  # ... then a person, same id
        ("a", "news", False),  # another customer's "a": its own event
        ("b", "shop", False),
        ("b", "shop", False),  # a plain retry
        ("c", "shop", True),
        ("c", "shop", True),  # a bot's retry
    ]
    events = [
        decoded_event("page_view", customer, when, event_id=event_id, user_id=f"u-{i}")
        for i, (event_id, customer, _) in enumerate(sent)
    ]
    _land(mart_env, events, [bot for _, _, bot in sent], 100)
    _, con = _day(mart_env)

    def rows(relation: str) -> list[tuple]:
        return con.sql(
            f"SELECT customer_id, event_id, user_id FROM {relation} ORDER BY ALL"
        ).fetchall()

    assert rows("events") == [("news", "a", "u-2"), ("shop", "a", "u-1"), ("shop", "b", "u-3")]
    assert rows("billed_events") == [
        ("news", "a", "u-2"),
        ("shop", "a", "u-0"),
        ("shop", "b", "u-3"),
        ("shop", "c", "u-5"),
    ]
    assert len(rows("events_raw")) == 4 and len(rows("billed_events_raw")) == 7
    # the usage check counts distinct keys from the repeated rows, not by grouping the day
    distinct = con.sql(
        "SELECT (SELECT count(*) FROM billed_events_raw) "
        "- (SELECT count(*) FROM billed_events_repeated) "
        "+ (SELECT count(DISTINCT (customer_id, event_id)) FROM billed_events_repeated), "
        "(SELECT count(DISTINCT (customer_id, event_id)) FROM billed_events_raw)"
    ).fetchall()
    assert distinct == [(4, 4)]
    con.close()


def test_the_checks_computed_in_one_scan_equal_each_computed_alone(mart_env: Settings) -> None:
    """The plain events sides of the reconcile lines are computed together, one scan per
    relation; each gives what its own query gives, over a day with every kind of event."""
    make_lake(mart_env.lake_dir)
    builder = MartBuilder(mart_env)
    con = builder._connect(spill=False)
    scanner = LakeScanner(mart_env.lake_dir)
    builder._prepare(con, scanner.day(D1))
    builder._prepare_state(con, D1, scanner, builder.marts, set())
    sides = [r.events_expr for m in builder.marts for r in m.reconciliations]
    batches, rest = batched_sides(sides)
    assert sum(len(b) for b in batches.values()) >= 10 and ("events", False) in batches
    together = builder._events_sides(con, builder.marts, D1)
    for side in sides:
        sql = f"SELECT ({side})::DOUBLE"
        alone = con.execute(sql, builder._params(sql, D1)).fetchall()[0][0]
        if side in rest:
            assert side not in together
        else:
            assert together[side] == pytest.approx(alone, rel=1e-12), side
    assert any(together[s] for s in together)  # not all zero: the day has events
    con.close()


def test_only_a_plain_side_is_batched() -> None:
    batches, rest = batched_sides(
        [
            "(SELECT count(*) FROM events WHERE a IN (1, 2))",
            "(SELECT coalesce(sum(cost), 0) FROM events)",
            "(SELECT count(*) FROM events WHERE a = 1) * (2)",  # not one condition
            "(SELECT count(*) FROM events WHERE a = (SELECT 1))",  # a subquery
            "(SELECT count(*) FROM day_users) - 1",
        ]
    )
    assert batches == {
        ("events", False): {
            "(SELECT count(*) FROM events WHERE a IN (1, 2))": (
                "count(*) FILTER (WHERE a IN (1, 2))"
            ),
            "(SELECT coalesce(sum(cost), 0) FROM events)": "coalesce(sum(cost), 0)",
        }
    }
    assert len(rest) == 3


def _varied_events(count: int, seed: int) -> list[dict]:
    """Every event kind, text in several scripts (UTF-8 widths 1 to 4), optional fields
    present and absent."""
    rng = random.Random(seed)
    texts = ["plain", "café", "日本語のページ", "emoji 🎉🚀", "", "x" * 300]
    kinds = ["page_view", "click", "signup", "purchase", "impression", "ad_click", "conversion"]
    events = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        url = f"https://shop.example/{rng.choice(texts)}"
        payload = {"url": url} if kind == "page_view" else {}
        events.append(
            decoded_event(
                kind,
                rng.choice(["shop", "新しい店"]),
                MIDNIGHT + timedelta(minutes=n),
                payload=payload or None,
                event_id=f"v{n}-{rng.choice(texts)}"[:100],
                user_id=rng.choice([None, f"u-{rng.choice(texts)}"[:100]]),
                session_id=rng.choice([None, "s1"]),
                ip=rng.choice(["81.2.69.160", "2001:db8::1", None]),
            )
        )
    return events


def _lake_files(settings: Settings) -> list:
    return sorted((settings.lake_dir / "events").rglob("*.parquet"))


def test_landed_sizes_equal_the_sizes_computed_from_the_fields_sent(mart_env: Settings) -> None:
    """``event_bytes``, set when a row is landed, is the size the SQL definition gives for
    the same row, byte for byte: multi-byte text, nulls, every event kind, IPs anonymised."""
    events = _varied_events(300, seed=3)
    _land(mart_env, events, [False] * len(events), 0)
    _, con = _day(mart_env)
    rows = con.sql(
        f"SELECT event_id, event_bytes, ({event_bytes_sql()})::BIGINT FROM "
        f"read_parquet({[str(p) for p in _lake_files(mart_env)]})"
    ).fetchall()
    con.close()
    assert len(rows) == 300
    assert [(e, computed) for e, _, computed in rows] == [(e, landed) for e, landed, _ in rows]
    assert len({landed for _, landed, _ in rows}) > 50  # sizes that differ: a real comparison


def test_usage_bytes_are_the_same_with_landed_sizes_and_without(mart_env: Settings) -> None:
    """A day whose files all carry ``event_bytes`` sums the column; a day with a file from
    before the column (or compacted with one: nulls) computes it from the fields sent. The
    usage mart's rows are the same either way."""
    events = _varied_events(200, seed=5)
    retry = dict(events[0])  # a duplicate: its bytes are not billed twice
    _land(mart_env, events[:120], [False] * 120, 0)
    _land(mart_env, [*events[120:], retry], [False] * 81, 1000)
    files = _lake_files(mart_env)
    assert len(files) >= 2

    def usage() -> tuple[bool, list[tuple]]:
        builder = MartBuilder(mart_env)
        con = builder._connect(spill=False)
        day = LakeScanner(mart_env.lake_dir).day(DAY)
        landed = builder._prepare(con, day)
        assert sizes_landed(con, day.events) is landed
        sql = expand(builder.by_name["customer_usage_daily"].sql, landed)
        rows = con.sql(sql, params={"event_date": DAY}).fetchall()
        con.close()
        return landed, sorted(rows, key=repr)

    with_sizes, rows = usage()
    assert with_sizes and sum(r[7] for r in rows) > 20_000
    # one file as landed before the column existed
    old = pq.read_table(files[0])
    pq.write_table(old.drop_columns(["event_bytes"]), files[0])
    assert usage() == (False, rows)
    # the same file with the column, but null in some rows (a compaction of old and new)
    sizes = old.column("event_bytes").to_pylist()
    partly = pa.array([None if i % 2 else s for i, s in enumerate(sizes)], pa.int64())
    column = old.schema.get_field_index("event_bytes")
    pq.write_table(old.set_column(column, "event_bytes", partly), files[0])
    assert usage() == (False, rows)
    pq.write_table(old, files[0])
    assert usage() == (True, rows)


def test_a_day_reads_the_same_from_its_files_alone_and_beside_the_landed_shape(
    mart_env: Settings,
) -> None:
    """Files with exactly the landed columns are read alone (a row count is then the
    footers'); a file from before a column existed, or with a column of another type, is
    read beside an empty table of the landed shape. The day's relations are the same rows
    either way, with the same duplicates dropped and bots left out."""
    events = _varied_events(150, seed=11)
    _land(mart_env, events[:90], [i % 9 == 0 for i in range(90)], 0)
    _land(mart_env, [*events[90:], dict(events[3]), dict(events[4])], [False] * 62, 1000)
    files = _lake_files(mart_env)
    assert landed_shape(files)

    def relations() -> dict[str, list]:
        """Each relation's rows by column name (a day without landed sizes computes them
        last, after the platform's columns)."""
        _, con = _day(mart_env)
        out: dict[str, list] = {}
        for name in ("events_raw", "events", "billed_events_raw", "billed_events"):
            rows = con.sql(f"SELECT * FROM {name}").to_arrow_table().to_pylist()
            out[name] = sorted((sorted(r.items()) for r in rows), key=repr)
        out["count"] = con.sql("SELECT count(*) FROM billed_events_raw").fetchall()
        con.close()
        return out

    alone = relations()
    assert len(alone["events_raw"]) > len(alone["events"]) > 100  # duplicates and bots out
    assert alone["count"] == [(152,)]
    original = pq.read_table(files[1])
    # a file from before the newest column: read beside the landed shape (and its sizes
    # computed from the fields sent, the same figures)
    pq.write_table(original.drop_columns(["event_bytes"]), files[1])
    assert not landed_shape(files)
    assert relations() == alone
    # the same columns, one of another type (an int32 where the shape has int64)
    column = original.schema.get_field_index("event_bytes")
    retyped = original.set_column(
        column, "event_bytes", original.column("event_bytes").cast(pa.int32())
    )
    pq.write_table(retyped, files[1])
    assert not landed_shape(files)
    assert relations() == alone
    # no file has a column (landed before it was in the contract): still there, null
    for path in files:
        pq.write_table(pq.read_table(path).drop_columns(["utm_term"]), path)
    assert not landed_shape(files)
    assert relations() == alone
