"""The marts on a lake whose true figures are known: exact numbers, dedupe, reconciliation,
the Parquet export, the warehouse and the ClickHouse mirror (no broker needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns
from eventplatform.clickhouse import ClickHouse
from eventplatform.events.arrow import (
    ENRICHED_FIELDS,
    KAFKA_FIELDS,
    events_to_arrow,
    landed_schema,
)
from eventplatform.marts.build import MartBuilder
from eventplatform.marts.catalog import load_marts, parse_mart
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.marts_data import CAMPAIGNS_CSV, D0, D1, D2, make_lake

MART_NAMES = [
    "campaign_performance_daily",
    "customer_usage_daily",
    "product_active_users_daily",
    "product_funnel_daily",
    "product_retention_weekly",
    "publisher_revenue_daily",
    "sessions_daily",
]


@pytest.fixture(scope="module")
def built_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, dict]:
    """The three days built once for the module (about 10 s on this machine), in a folder of
    their own; each test gets a copy (``built``), so a test that changes its data changes
    only its own."""
    data_dir = tmp_path_factory.mktemp("marts-built") / "data"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EP_DATA_DIR", str(data_dir))
        settings = Settings()
        ch = ClickHouse(settings.clickhouse_dsn, settings.clickhouse.database)
        ch.apply_ddl(settings.paths.sql_dir / "clickhouse")
        load_campaigns(ch, parse_campaigns(CAMPAIGNS_CSV))
        landed = make_lake(settings.lake_dir)
        builder = MartBuilder(settings, clickhouse=ch)
        parts = [p for day in (D0, D1, D2) for p in builder.build_day(day)]
        ch.close()
    return data_dir, parts, landed


@pytest.fixture
def built(mart_env: Settings, built_once):
    """(builder, the built partitions, the landed events) over this test's copy."""
    data_dir, parts, landed = built_once
    # symlinks kept: the engine's folder links its tables relatively (data/ -> store/)
    shutil.copytree(data_dir, mart_env.data_dir, symlinks=True, dirs_exist_ok=True)
    ch = ClickHouse(mart_env.clickhouse_dsn, mart_env.clickhouse.database)
    return MartBuilder(mart_env, clickhouse=ch), parts, landed


@pytest.fixture
def clickhouse(built) -> ClickHouse:
    return built[0].clickhouse


def warehouse(settings: Settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_mart_file_declares_its_columns_in_output_order(mart_env: Settings) -> None:
    from eventplatform.marts.build import output_schema

    marts = load_marts(REPO_ROOT / "sql" / "marts")
    assert [m.name for m in marts] == MART_NAMES
    for mart in marts:
        assert output_schema(mart_env, mart).names == list(mart.columns), mart.name
        assert mart.description and mart.owners and mart.reconciliations
        assert all(d for d in mart.columns.values()), mart.name


def test_campaign_performance_exact_figures(built, mart_env: Settings) -> None:
    rows = warehouse(
        mart_env,
        "SELECT campaign_id, advertiser, site_id, device, impressions, clicks, conversions, "
        "ctr, cvr, cost, revenue, conversion_value, ecpm FROM campaign_performance_daily "
        f"WHERE event_date = '{D1}' ORDER BY campaign_id",
    )
    assert rows == [
        ("cmp-1", "Acme Corp", "s-1", "mobile", 4, 2, 1, 0.5, 0.5, 4.0, 2.0, 40.0, 1000.0),
        ("cmp-2", None, "s-2", "desktop", 2, 0, 0, 0.0, None, 0.5, 0.25, 0.0, 250.0),
    ]
    assert warehouse(
        mart_env,
        "SELECT event_date, impressions, cost FROM campaign_performance_daily "
        f"WHERE event_date <> '{D1}'",
    ) == [(D2, 1, 0.25)]


def test_publisher_revenue_exact_figures(built, mart_env: Settings) -> None:
    rows = warehouse(
        mart_env,
        "SELECT publisher_id, site_id, impressions, clicks, conversions, revenue, "
        f"advertiser_cost, margin, ecpm FROM publisher_revenue_daily WHERE event_date = '{D1}' "
        "ORDER BY site_id",
    )
    assert rows == [
        ("p-1", "s-1", 4, 2, 1, 2.0, 4.0, 2.0, 500.0),
        ("p-1", "s-2", 2, 0, 0, 0.25, 0.5, 0.25, 125.0),
    ]


def _row_bytes(events: list[dict]) -> int:
    """The event_bytes definition, recomputed here in Python from the landed rows."""
    table = events_to_arrow(events, "events.raw", 0, list(range(len(events))), 0)
    not_sent = {f.name for f in KAFKA_FIELDS} | {f.name for f in ENRICHED_FIELDS} | {"event_bytes"}
    widths = {pa.int32(): 4, pa.int64(): 8, pa.float64(): 8, pa.bool_(): 1}
    total = 0
    for f in landed_schema():
        if f.name in not_sent:
            continue
        for value in table.column(f.name).to_pylist():
            if value is None:
                continue
            if pa.types.is_string(f.type):
                total += len(value.encode())
            else:
                total += 8 if pa.types.is_timestamp(f.type) else widths[f.type]
    return total


def test_customer_usage_dedupes_counts_overflow_dead_letters_and_bytes(
    built, mart_env: Settings
) -> None:
    _, _, landed = built
    rows = warehouse(
        mart_env,
        "SELECT customer_id, event_type, events, duplicates_dropped, overflow_events, "
        "dead_letters, users FROM customer_usage_daily "
        f"WHERE event_date = '{D1}' ORDER BY customer_id, event_type",
    )
    assert rows == [
        ("(unknown)", "(dead letter)", 0, 0, 0, 1, 0),
        ("adnet", "ad_click", 2, 0, 0, 0, 1),
        ("adnet", "conversion", 1, 0, 0, 0, 1),
        ("adnet", "impression", 6, 0, 0, 0, 1),
        ("shop", "(dead letter)", 0, 0, 0, 2, 0),
        ("shop", "click", 3, 1, 0, 0, 3),
        ("shop", "page_view", 5, 1, 2, 0, 4),
        ("shop", "purchase", 1, 1, 0, 0, 1),
        ("shop", "signup", 2, 1, 0, 0, 2),
    ]
    (shop_bytes, dead_bytes) = warehouse(
        mart_env,
        "SELECT sum(bytes) FILTER (WHERE event_type <> '(dead letter)'), "
        "sum(bytes) FILTER (WHERE event_type = '(dead letter)') FROM customer_usage_daily "
        f"WHERE event_date = '{D1}' AND customer_id IN ('shop', '(unknown)')",
    )[0]
    # counted once although u1's four events were landed twice
    assert shop_bytes == _row_bytes(landed["shop_d1"])
    assert dead_bytes == sum(len(v) for v in landed["dead_d1"])


def test_product_active_users_funnel_and_retention(built, mart_env: Settings) -> None:
    assert warehouse(
        mart_env,
        "SELECT event_date, customer_id, dau, wau, mau, stickiness, sessions, events "
        "FROM product_active_users_daily ORDER BY event_date, customer_id",
    ) == [
        (D0, "shop", 2, 2, 2, 1.0, 2, 2),
        (D1, "adnet", 1, 1, 1, 1.0, 1, 9),
        (D1, "shop", 4, 5, 5, 0.8, 5, 11),
        (D2, "adnet", 1, 1, 1, 1.0, 1, 1),
        (D2, "shop", 2, 5, 6, round(2 / 6, 6), 2, 2),
    ]
    assert warehouse(
        mart_env,
        "SELECT step, step_name, users, conversion_from_previous, conversion_from_start "
        f"FROM product_funnel_daily WHERE event_date = '{D1}' AND customer_id = 'shop' "
        "ORDER BY step",
    ) == [
        (1, "page_view", 4, None, 1.0),
        (2, "click", 2, 0.5, 0.5),
        (3, "signup", 1, 0.5, 0.25),
        (4, "purchase", 1, 1.0, 0.25),
    ]
    # D2 (Tuesday) as of which: cohort of the week of Nov 9 = u1, u6; of Nov 16 = u2..u5
    assert warehouse(
        mart_env,
        "SELECT activity_week, cohort_week, week_number, cohort_users, retained_users, "
        f"retention FROM product_retention_weekly WHERE event_date = '{D2}' "
        "AND customer_id = 'shop' ORDER BY cohort_week",
    ) == [
        (D1, D0.replace(day=9), 1, 2, 1, 0.5),
        (D1, D1, 0, 4, 4, 1.0),
    ]


def test_every_partition_reconciles_and_the_check_catches_a_mismatch(
    built, mart_env: Settings, clickhouse: ClickHouse, tmp_path: Path
) -> None:
    _, parts, _ = built
    assert len(parts) == 3 * len(MART_NAMES)
    assert all(p.reconciled for p in parts), [str(r) for p in parts for r in p.reconciliations]
    assert all(p.mirrored for p in parts)

    # A mart that loses rows (a bad join or filter): its reconciliation says so, with numbers.
    source = (REPO_ROOT / "sql" / "marts" / "campaign_performance_daily.sql").read_text()
    broken = tmp_path / "campaign_performance_daily.sql"
    broken.write_text(
        source.replace(
            "    FROM events\n    WHERE event_type IN",
            "    FROM events\n    WHERE site_id <> 's-2' AND event_type IN",
        )
    )
    builder = MartBuilder(mart_env, [parse_mart(broken)], clickhouse=clickhouse)
    ((_, part),) = builder.compute_day(D1).values()
    assert not part.reconciled
    failed = {
        r.expression.split(" == ")[0]: (r.mart_value, r.events_value)
        for r in part.reconciliations
        if not r.passed
    }
    assert failed == {
        "sum(impressions)": (4.0, 6.0),
        "sum(cost)": (4.0, 4.5),
        "sum(revenue)": (2.0, 2.25),
    }


def test_rebuilding_a_day_is_idempotent_everywhere(built, mart_env: Settings, clickhouse) -> None:
    builder, _, _ = built

    def counts():
        duck = warehouse(
            mart_env, "SELECT count(*), sum(impressions) FROM campaign_performance_daily"
        )[0]
        with clickhouse.session() as client:
            table = f"{clickhouse.database}.campaign_performance_daily"
            ch = client.query(f"SELECT count(), sum(impressions) FROM {table}").result_rows[0]
        return duck, tuple(ch)

    before = counts()
    builder.build_day(D1)
    builder.build_day(D1)
    assert counts() == before == ((3, 7), (3, 7))


def test_duckdb_parquet_and_clickhouse_give_the_same_numbers(
    built, mart_env: Settings, clickhouse: ClickHouse
) -> None:
    for name in MART_NAMES:
        duck = sorted(warehouse(mart_env, f"SELECT * FROM {name}"), key=repr)
        with clickhouse.session() as client:
            ch = client.query(f"SELECT * FROM {clickhouse.database}.{name}").result_rows
        assert sorted(ch, key=repr) == duck, name
        files = sorted((mart_env.lake_dir / "marts" / name).glob("date=*/part-0.parquet"))
        exported = [tuple(r.values()) for f in files for r in pq.read_table(f).to_pylist()]
        assert sorted(exported, key=repr) == duck, name


def test_clickhouse_computes_the_same_campaign_figures_from_its_own_events(
    built, mart_env: Settings, clickhouse: ClickHouse
) -> None:
    """Another engine, from the landed events in ClickHouse (with the same duplicates)."""
    from eventplatform_tests.helpers import land_rows

    _, _, landed = built
    land_rows(clickhouse, landed["ad_d1"], "ad-d1")
    land_rows(clickhouse, landed["ad_d1"][:3], "ad-d1-replay")  # same customer and event_id
    db = clickhouse.database
    with clickhouse.session() as client:
        from_events = client.query(
            "SELECT campaign_id, countIf(event_type = 'impression'), "
            "countIf(event_type = 'ad_click'), countIf(event_type = 'conversion'), "
            "round(sum(cost), 6), round(sum(revenue), 6) FROM (SELECT customer_id, event_id, "
            "any(campaign_id) AS campaign_id, any(event_type) AS event_type, any(cost) AS cost, "
            f"any(revenue) AS revenue FROM {db}.events WHERE toDate(event_ts) = %(d)s "
            "GROUP BY customer_id, event_id) GROUP BY campaign_id ORDER BY campaign_id",
            parameters={"d": D1},
        ).result_rows
    assert [tuple(r) for r in from_events] == warehouse(
        mart_env,
        "SELECT campaign_id, impressions, clicks, conversions, cost, revenue "
        f"FROM campaign_performance_daily WHERE event_date = '{D1}' ORDER BY campaign_id",
    )


def test_a_changed_mart_rebuilds_its_tables_from_the_parquet_exports(
    built, mart_env: Settings, clickhouse: ClickHouse
) -> None:
    """The warehouse table follows a mart whose columns changed; other days are kept."""
    builder, _, _ = built
    con = duckdb.connect(str(mart_env.warehouse_path))
    con.execute("ALTER TABLE publisher_revenue_daily DROP COLUMN margin")
    con.close()
    builder.build_day(D2, ["publisher_revenue_daily"])
    assert warehouse(
        mart_env,
        "SELECT event_date, sum(margin) FROM publisher_revenue_daily GROUP BY 1 ORDER BY 1",
    ) == [(D1, 2.25), (D2, 0.125)]


def test_a_mart_file_without_its_header_is_refused(tmp_path: Path) -> None:
    from eventplatform.marts.catalog import MartFileError

    path = tmp_path / "bad_mart.sql"
    path.write_text("-- name: bad_mart\n-- owners: team:x\n-- grain: event_date\nSELECT 1\n")
    with pytest.raises(MartFileError, match="no '-- description:' line"):
        parse_mart(path)
    path.write_text(
        "-- name: bad_mart\n-- description: d\n-- owners: team:x\n-- grain: event_date\n"
        "-- column event_date: the day\n-- reconcile: sum(x) = 1\nSELECT 1\n"
    )
    with pytest.raises(MartFileError, match="reconcile needs one ' == '"):
        parse_mart(path)
    path.write_text(
        "-- name: bad_mart\n-- description: a mart\n--   on two lines\n-- owners: team:x\n"
        "-- grain: event_date\n-- column event_date: the day\n-- reconcile: count(*) == 1\n"
        "SELECT $event_date::DATE AS event_date\n"
    )
    mart = parse_mart(path)
    assert mart.description == "a mart on two lines"
    assert mart.parameters == {"event_date"} and not mart.reads_history


def test_tables_carry_the_descriptions_in_both_engines(
    built, mart_env: Settings, clickhouse: ClickHouse
) -> None:
    ctr = "clicks / impressions (NULL without impressions)."
    assert warehouse(
        mart_env,
        "SELECT comment FROM duckdb_columns() "
        "WHERE table_name = 'campaign_performance_daily' AND column_name = 'ctr'",
    ) == [(ctr,)]
    (table_comment,) = warehouse(
        mart_env, "SELECT comment FROM duckdb_tables() WHERE table_name = 'customer_usage_daily'"
    )[0]
    assert table_comment.startswith("What each customer sent per day (UTC)")
    with clickhouse.session() as client:
        rows = client.query(
            "SELECT comment FROM system.columns WHERE database = %(db)s "
            "AND table = 'campaign_performance_daily' AND name = 'ctr'",
            parameters={"db": clickhouse.database},
        ).result_rows
    assert rows == [(ctr,)]


def test_event_bytes_count_what_was_sent_the_same_per_row_and_per_column() -> None:
    """Usage bytes leave out Kafka's and the enrichment's columns, in the per-row expression
    (the reconciliation) and in the per-column sums (the mart) alike."""
    from eventplatform.marts.build import event_bytes_sql, event_bytes_sum_sql

    schema = landed_schema()
    rows = [{f.name: None for f in schema} for _ in range(3)]
    for i, row in enumerate(rows):
        row.update(customer_id=f"c{i}", event_id=f"e{i}", event_type="page_view")
        for f in ENRICHED_FIELDS:  # enriched values must not count
            if pa.types.is_string(f.type):
                row[f.name] = "x" * 50
    table = pa.Table.from_pylist(rows, schema=schema)
    con = duckdb.connect()
    con.register("t", table)
    per_row = con.execute(f"SELECT sum({event_bytes_sql()}) FROM t").fetchone()[0]
    per_column = con.execute(f"SELECT {event_bytes_sum_sql()} FROM t").fetchone()[0]
    sent = sum(len(r["customer_id"]) + len(r["event_id"]) + len("page_view") for r in rows)
    assert per_row == per_column == sent
