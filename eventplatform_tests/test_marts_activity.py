"""The users' activity state behind active users and retention: chained day to day, equal to
a rebuild from scratch, invalidated by late data and replays (no broker needed)."""

from __future__ import annotations

import random
import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from eventplatform.marts.activity import STATE_DIR
from eventplatform.marts.build import MartBuilder, expand
from eventplatform.marts.catalog import parse_mart
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.marts_data import at, event, land

X = date(2026, 11, 2)  # a Monday
DAYS = [X + timedelta(days=n) for n in range(4)]
NAMES = ["product_active_users_daily", "product_retention_weekly", "daily_users", "user_activity"]


def visit(customer: str, user: str, day: date, hour: int = 10) -> dict:
    return event("page_view", customer, at(day, hour), user_id=user, session_id=f"s-{user}")


def rows(settings: Settings, mart: str, day: date) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(
            f"SELECT * FROM {mart} WHERE event_date = $d ORDER BY ALL", {"d": day}
        ).fetchall()
    finally:
        con.close()


def active(settings: Settings, day: date) -> dict[str, tuple]:
    """customer -> (dau, wau, mau) of the day as stored."""
    return {r[1]: r[2:5] for r in rows(settings, "product_active_users_daily", day)}


def build(builder: MartBuilder, day: date) -> str:
    parts = builder.build_day(day, NAMES)
    assert all(p.reconciled for p in parts), [str(r) for p in parts for r in p.reconciliations]
    assert {p.mart for p in parts} == set(NAMES)
    return builder.activity.source


@pytest.fixture(scope="module")
def three_days_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days landed and built (the state made once, then chained), once for the module:
    the data folder. ``three_days`` gives each test a copy."""
    data_dir = tmp_path_factory.mktemp("three-days") / "data"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EP_DATA_DIR", str(data_dir))
        settings = Settings()
        lake = settings.lake_dir
        land(lake, [visit("shop", "u1", X), visit("shop", "u2", X), visit("other", "v1", X)])
        land(lake, [visit("shop", "u2", DAYS[1]), visit("shop", "u3", DAYS[1])])
        land(lake, [visit("shop", "u4", DAYS[2]), visit("other", "v2", DAYS[2])])
        builder = MartBuilder(settings)
        assert [build(builder, d) for d in DAYS[:3]] == ["rebuilt", "chained", "chained"]
    return data_dir


@pytest.fixture
def three_days(mart_env: Settings, three_days_once: Path) -> MartBuilder:
    """A builder over this test's copy of ``three_days_once`` (the copies keep the files'
    modification times, so the inputs' fingerprints are the built ones)."""
    shutil.copytree(three_days_once, mart_env.data_dir, dirs_exist_ok=True)
    return MartBuilder(mart_env)


def test_the_chained_state_gives_what_a_rebuild_from_the_lake_gives(
    mart_env: Settings, three_days: MartBuilder
) -> None:
    builder = three_days
    assert active(mart_env, DAYS[2]) == {"other": (1, 2, 2), "shop": (1, 4, 4)}
    chained = {m: rows(mart_env, m, DAYS[2]) for m in NAMES[:2]}
    # the retention of the week so far: cohort of the week (Monday X), u4 active on Wednesday
    assert [r[3:] for r in chained["product_retention_weekly"] if r[1] == "shop"] == [
        (X, 0, 4, 4, 1.0)
    ]

    shutil.rmtree(mart_env.lake_dir / STATE_DIR)  # no state, no per-day sets: from the lake
    assert build(builder, DAYS[2]) == "rebuilt"
    assert sorted(builder.activity.recomputed) == [X, DAYS[1]]
    assert {m: rows(mart_env, m, DAYS[2]) for m in NAMES[:2]} == chained


def test_late_data_on_a_past_day_invalidates_the_states_that_include_it(
    mart_env: Settings, three_days: MartBuilder
) -> None:
    builder = three_days
    land(mart_env.lake_dir, [visit("shop", "u9", X, hour=23)])  # late, for the first day

    # the day after is built before the late day is: yesterday's state counted the old X
    assert build(builder, DAYS[3]) == "rebuilt"
    assert builder.activity.recomputed == [X]  # only the changed day is read from the lake
    assert active(mart_env, DAYS[3]) == {"other": (0, 2, 2), "shop": (0, 5, 5)}

    # what the late-data sensor asks for: the day, then the later days that look back on it
    assert [build(builder, d) for d in DAYS] == ["rebuilt", "chained", "chained", "chained"]
    assert active(mart_env, X) == {"other": (1, 1, 1), "shop": (3, 3, 3)}
    assert active(mart_env, DAYS[3]) == {"other": (0, 2, 2), "shop": (0, 5, 5)}


def test_a_customers_history_replay_costs_the_others_one_rebuild_from_the_day_sets(
    mart_env: Settings, three_days: MartBuilder
) -> None:
    """A customer replaying old days changes those days' files: the next build rebuilds the
    state once, from the window's per-day sets, recomputing only the replayed days from the
    lake; the other customers' figures do not change and the day after chains again."""
    builder = three_days
    before = active(mart_env, DAYS[2])
    replay = [visit("replayer", f"r{n}", d) for d in DAYS[:2] for n in range(50)]
    land(mart_env.lake_dir, replay)
    land(mart_env.lake_dir, replay)  # twice: duplicates, counted once

    assert build(builder, DAYS[3]) == "rebuilt"
    assert sorted(builder.activity.recomputed) == DAYS[:2]
    after = active(mart_env, DAYS[3])
    assert after["replayer"] == (0, 50, 50)  # the same 50 users on both days
    assert after["shop"] == (0, before["shop"][1], before["shop"][2])
    assert after["other"] == (0, before["other"][1], before["other"][2])
    assert build(builder, DAYS[3] + timedelta(days=1)) == "chained"


@pytest.mark.parametrize("day", [date(2026, 11, 8), date(2026, 11, 11)])  # a Sunday, a Wednesday
def test_retention_cohorts_match_the_definition_for_every_day_of_the_window(day: date) -> None:
    """The retention SQL over a hand-made activity state in which users were first seen on
    each of the window's 63 days, some active again this week, against the definition
    computed here in Python: the cohort is the week (Monday) of the earliest day seen within
    the lookback, and a user is retained when active in the week up to the day."""
    weeks = 8
    mart = parse_mart(REPO_ROOT / "sql" / "marts" / "product_retention_weekly.sql")
    rng = random.Random(7)
    state = []
    for k in range(63):  # first seen k days before the day, then on random later days
        for n in range(3):
            days = 1 << k
            for j in range(k):
                if rng.random() < 0.2:
                    days |= 1 << j
            state.append(("shop", f"u{k}-{n}", days))
    monday = day - timedelta(days=day.weekday())
    lookback_start = monday - timedelta(days=7 * weeks)
    expected: dict[date, list[int]] = {}
    for _, _, days in state:
        seen = [k for k in range(63) if days >> k & 1 and day - timedelta(days=k) >= lookback_start]
        if not seen:
            continue
        first = day - timedelta(days=max(seen))
        cohort = first - timedelta(days=first.weekday())
        counts = expected.setdefault(cohort, [0, 0])
        counts[0] += 1
        counts[1] += any(day - timedelta(days=k) >= monday for k in seen)
    want = sorted(
        (cohort, (monday - cohort).days // 7, users, retained)
        for cohort, (users, retained) in expected.items()
        if retained > 0
    )

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE user_activity (customer_id VARCHAR, user_id VARCHAR, active_days UBIGINT)"
    )
    con.executemany("INSERT INTO user_activity VALUES (?, ?, ?)", state)
    sql = expand(mart.sql)
    got = con.execute(sql, {"event_date": day, "retention_weeks": weeks}).fetchall()
    assert all(r[2] == monday for r in got)
    assert sorted((r[3], r[4], r[5], r[6]) for r in got) == want
    assert len(want) == weeks + 1  # every cohort of the lookback has a retained user


def test_old_activity_snapshots_can_be_deleted_the_next_build_uses_the_day_sets(
    mart_env: Settings, three_days: MartBuilder
) -> None:
    """Only yesterday's ``user_activity`` is read by a build. With every snapshot deleted
    (storage kept flat), the next day's state is rebuilt from the per-day user sets, without
    reading any day from the lake, and its figures are the same; the day after chains."""
    builder = three_days
    assert build(builder, DAYS[3]) == "chained"
    figures = {m: rows(mart_env, m, DAYS[3]) for m in NAMES[:2]}
    snapshots = sorted((mart_env.lake_dir / STATE_DIR / "user_activity").rglob("*.parquet"))
    assert len(snapshots) == 4
    for path in snapshots:
        path.unlink()

    assert build(builder, DAYS[3]) == "rebuilt"
    assert builder.activity.recomputed == []  # from the daily_users files alone
    assert {m: rows(mart_env, m, DAYS[3]) for m in NAMES[:2]} == figures
    assert build(builder, DAYS[3] + timedelta(days=1)) == "chained"
