"""Enrichment (eventplatform/enrich/): each enrichment on known events, junk thrown at each
(hypothesis), the per-customer settings and their replay determinism, the salt's secrecy,
the rates, and old (unenriched) and new lake files and ClickHouse rows read together."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventplatform.clickhouse import ClickHouse
from eventplatform.collect.customers import CustomerStore
from eventplatform.enrich import Enricher, Reference, enrichment_counts
from eventplatform.enrich.cli import enrichment
from eventplatform.enrich.currency import RatesError, RatesStore
from eventplatform.enrich.customer_settings import SettingsError, SettingsStore
from eventplatform.events.arrow import ENRICHED_FIELDS, events_to_arrow, landed_schema
from eventplatform.land.lake import OffsetRange, write_events
from eventplatform.marts.build import MartBuilder
from eventplatform.settings import REPO_ROOT, Settings
from eventplatform_tests.helpers import decoded_event

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36"
)
ENRICHED = [f.name for f in ENRICHED_FIELDS]
NOW = datetime.now(UTC)


def unenriched(events: list[dict]) -> pa.Table:
    """A decoded batch as the lander has it before enrichment (which also sets
    ``event_bytes``), and as the lake's files from before enrichment are."""
    table = events_to_arrow(events, "events.raw", 0, list(range(len(events))), 0)
    return table.drop_columns([*ENRICHED, "event_bytes"])


def page(
    customer: str = "shop",
    *,
    received: datetime = NOW,
    url="https://shop.example/",
    referrer=None,
    **envelope,
) -> dict:
    payload = {"url": url, "referrer": referrer}
    return decoded_event("page_view", customer, received, payload=payload, **envelope)


def purchase(currency: str, amount: float, when: datetime = NOW) -> dict:
    return decoded_event("purchase", "shop", when, payload={"currency": currency, "amount": amount})


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_user_agent_bot_geo_ip_campaign_and_referrer_on_known_events() -> None:
    events = [
        page(
            user_agent=IPHONE,
            ip="8.8.8.8",
            url="https://shop.example/p?utm_source=news+letter&utm_medium=email&x=1#utm_term=no",
            referrer="https://mail.google.com/mail/u/0/",
        ),
        page(
            user_agent=IPAD,
            ip="2a00:1450:4001:82b::200e",
            url="https://shop.example/?gclid=Cj0&utm_source=google&utm_medium=cpc",
            referrer="https://www.google.co.uk/search?q=x",
        ),
        page(user_agent=WINDOWS, ip="192.168.1.7", referrer="https://WWW.Bing.com/search"),
        page(user_agent=GOOGLEBOT, ip="::ffff:8.8.4.4", referrer="https://t.co/x"),
        page(user_agent=HEADLESS, ip="not-an-ip", referrer="https://blog.other.example/a"),
        page(device="ctv"),  # no user agent: the device the sender named
    ]
    out = Enricher(Reference()).enrich(unenriched(events))
    r = rows(out)
    assert [x["device_class"] for x in r] == ["mobile", "tablet", "desktop", "bot", "bot", "ctv"]
    assert [x["is_bot"] for x in r] == [False, False, False, True, True, False]
    assert [x["bot_reason"] for x in r] == [None, None, None, "ua_spider", "automation", None]
    assert (r[0]["ua_browser"], r[0]["ua_browser_major"], r[0]["ua_os"]) == (
        "Mobile Safari",
        "18",
        "iOS",
    )
    assert r[0]["ua_os_version"] == "18.1" and r[0]["ua_device"] == "iPhone"
    assert r[2]["ua_browser"] == "Chrome" and r[2]["ua_os"] == "Windows"
    # Geo from the raw address, then the address truncated (IPv4 /24, IPv6 /48).
    assert [x["geo_country"] for x in r] == ["US", "IE", None, "US", None, None]
    assert [x["ip"] for x in r] == [
        "8.8.8.0",
        "2a00:1450:4001::",
        "192.168.1.0",
        "8.8.4.0",
        None,
        None,
    ]
    assert {x["ip_mode"] for x in r} == {"truncate"}
    assert (r[0]["utm_source"], r[0]["utm_medium"], r[0]["utm_term"]) == (
        "news letter",
        "email",
        None,
    )
    assert (r[1]["gclid"], r[1]["utm_source"]) == ("Cj0", "google")
    assert [x["referrer_host"] for x in r] == [
        "mail.google.com",
        "google.co.uk",
        "bing.com",
        "t.co",
        "blog.other.example",
        None,
    ]
    assert [x["referrer_class"] for x in r] == ["email", "paid", "search", "social", "other", None]
    meta = enrichment_counts(out)
    assert meta["counts"]["ip_invalid"] == 1 and meta["counts"]["geo_unknown"] == 2
    assert meta["counts"]["bots"] == 2
    assert "iptocc" in meta["versions"]["geo"] and "ua-parser-builtins" in r[0]["enrich_version"]


def customers_db(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "customers.sqlite"
    store = CustomerStore(path)
    for name in names:
        store.add(name)
    return path


def test_customer_settings_keep_hash_and_internal_domains_apply_from_their_time(
    tmp_path: Path,
) -> None:
    db = customers_db(tmp_path, "shop", "other")
    store = SettingsStore(db, change_delay_s=0.0)
    store.set("shop", ip_mode="hash", internal_domains=["Shop.Example", "shop-cdn.example"])
    store.set("other", ip_mode="keep")
    with pytest.raises(SettingsError, match="no customer"):
        store.set("nobody", ip_mode="keep")
    with pytest.raises(SettingsError, match="not a domain"):
        store.set("shop", internal_domains=["not a domain"])
    later = datetime.now(UTC) + timedelta(seconds=1)
    before = NOW - timedelta(minutes=5)  # received before the change: the defaults
    events = [
        page("shop", received=later, ip="8.8.8.8", referrer="https://www.shop.example/cart"),
        page("other", received=later, ip="8.8.8.8", referrer="https://www.shop.example/cart"),
        page("shop", received=later, ip="8.8.8.9"),
        page("shop", received=before, ip="8.8.8.8"),
    ]
    out = rows(Enricher(Reference(store)).enrich(unenriched(events)))
    assert [r["ip_mode"] for r in out] == ["hash", "keep", "hash", "truncate"]
    assert out[1]["ip"] == "8.8.8.8"  # keep: as sent
    assert len(out[0]["ip"]) == 32 and out[0]["ip"] != out[2]["ip"]  # a token per address
    assert out[3]["ip"] == "8.8.8.0"
    assert [r["referrer_class"] for r in out[:2]] == ["internal", "other"]  # shop's domains only
    assert out[0]["geo_country"] == "US"  # geo before anonymisation


def test_a_replayed_batch_gives_the_same_rows_after_its_customer_changed_settings(
    tmp_path: Path,
) -> None:
    """The change takes effect after its delay: events received before it keep the setting
    they were landed with, whenever the batch is landed again (a new process, a new cache)."""
    db = customers_db(tmp_path, "shop")
    batch = unenriched(
        [page(received=datetime.now(UTC), ip=f"81.2.69.{i}", user_agent=IPHONE) for i in range(50)]
    )
    first = Enricher(Reference(SettingsStore(db, 60.0))).enrich(batch)
    SettingsStore(db, 60.0).set("shop", ip_mode="keep", internal_domains=["shop.example"])
    replayed = Enricher(Reference(SettingsStore(db, 60.0))).enrich(batch)
    assert replayed.equals(first) and replayed.schema.metadata == first.schema.metadata
    assert {r["ip_mode"] for r in rows(replayed)} == {"truncate"}


def test_the_salt_is_in_no_row_file_metadata_or_command_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EP_ENRICH_CHANGE_DELAY_S", "0")
    CustomerStore(tmp_path / "customers.sqlite").add("a")
    CustomerStore(tmp_path / "customers.sqlite").add("b")
    runner = CliRunner()
    outputs = [
        runner.invoke(enrichment, ["set", c, "--ip-mode", "hash"]).output for c in ("a", "b")
    ]
    outputs.append(runner.invoke(enrichment, ["show", "a"]).output)
    outputs.append(runner.invoke(enrichment, ["set", "a", "--rotate-salt"]).output)
    store = SettingsStore(tmp_path / "customers.sqlite", 0.0)
    salts = [store.current(c).salt for c in ("a", "b")]
    assert all(len(s) == 32 for s in salts) and salts[0] != salts[1]
    assert salts[0].hex() not in repr(store.current("a"))
    received = datetime.now(UTC) + timedelta(seconds=1)
    events = [page(c, received=received, ip="203.0.113.9") for c in ("a", "b")]
    table = Enricher(Reference(store)).enrich(unenriched(events))
    a, b = (r["ip"] for r in rows(table))
    assert a != b  # one customer's tokens say nothing about another's
    sink = io.BytesIO()
    pq.write_table(table, sink)
    blob = sink.getvalue() + json.dumps(enrichment_counts(table)).encode()
    blob += "".join(outputs).encode()
    for salt in salts:
        assert salt not in blob and salt.hex().encode() not in blob
    assert '"salt": "set"' in outputs[2]


def test_reporting_currency_from_dated_rates_with_unknown_currencies_counted(
    tmp_path: Path,
) -> None:
    store = RatesStore(tmp_path / "fx", "USD", change_delay_s=0.0)
    with pytest.raises(RatesError, match=r"line 3: rate -1\.0 must be a positive"):
        store.load("date,currency,rate\n2026-11-30,EUR,1.05\n2026-11-30,GBP,-1\n")
    with pytest.raises(RatesError, match="header"):
        store.load("day,cur,rate\n")
    assert store.tables() == []  # nothing loaded by a failed load
    store.load(
        "date,currency,rate\n2026-11-01,EUR,1.25\n2026-11-20,EUR,1.5\n2026-11-01,JPY,0.0078125\n"
    )
    time.sleep(0.01)
    when = datetime(2026, 11, 25, 12, tzinfo=UTC)
    early = datetime(2026, 10, 1, tzinfo=UTC)
    events = [
        purchase("EUR", 10.0, when),  # the 2026-11-20 rate
        purchase("JPY", 1280.0, when),
        purchase("USD", 7.0, when),
        purchase("XYZ", 3.0, when),  # unknown
        purchase("EUR", 4.0, early),  # before the first rate
    ]
    received = datetime.now(UTC) + timedelta(seconds=1)
    for e in events:
        e["received_ts"] = int(received.timestamp() * 1000)
    out = Enricher(Reference(rates=store), reporting_currency="USD").enrich(unenriched(events))
    r = rows(out)
    assert [x["amount_reporting"] for x in r] == [15.0, 10.0, 7.0, None, None]
    assert [x["reporting_currency"] for x in r] == ["USD", "USD", "USD", None, None]
    counts = enrichment_counts(out)["counts"]
    assert (counts["fx_unknown_currency"], counts["fx_no_rate"]) == (1, 1)
    assert "rates-" in r[0]["enrich_version"]


junk_text = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=40),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.integers(1, 10_240).map(lambda n: "Mozilla/5.0 (" + "x" * n),
    st.sampled_from(
        [
            "999.1.1.1",
            "::1",
            "10.0.0.1",
            "fe80::1%eth0",
            "1.2.3",
            "1.2.3.4.5",
            "0x7f.1.1.1",
            "http://[::1",
            "https://?utm_source=%ff%zz&gclid=",
            "mailto:a@b",
            "//no-scheme.example/?utm_medium=email",
            "\x00\ufffd",
        ]
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            junk_text,
            junk_text,
            junk_text,
            junk_text,
            st.sampled_from(["EUR", "", "eur", "€", "XXXXXXXX", "USD"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_junk_in_every_enriched_field_gives_nulls_and_counts_never_an_exception(values) -> None:
    """Straight into the batch, past the collector's limits (a producer writing to the topic
    itself is held to no field length): 10 KB user agents, binary, invalid addresses."""
    base, bought = page(), purchase("EUR", 1.5)
    events = []
    for ua, ip, url, referrer, cur in values:
        events.append(
            {
                **base,
                "user_agent": ua,
                "ip": ip,
                "payload": {"url": url or "x", "referrer": referrer},
            }
        )
        events.append({**bought, "payload": {**bought["payload"], "currency": cur}})
    out = ENRICHER.enrich(unenriched(events))
    assert out.num_rows == len(events) and out.schema.names == landed_schema().names
    counts = enrichment_counts(out)["counts"]
    assert counts["rows"] == len(events)
    unparsable = sum(1 for _, ip, *_ in values if ip is not None and not _address(ip))
    assert counts.get("ip_invalid", 0) == unparsable
    assert counts["fx_unknown_currency"] + counts["fx_no_rate"] == sum(
        1 for *_, cur in values if cur != "USD"
    )
    for r, (_, ip, *_) in zip(rows(out)[::2], values, strict=True):
        assert r["ip"] is None if not _address(ip) else r["ip"] is not None
        assert ip is None or r["ip"] != ip or ip == "::1"  # never raw (::1 /48 is ::)


def _address(text: str | None) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address((text or "").strip())
    except ValueError:
        return False
    return True


ENRICHER = Enricher(Reference(), ua_parse_budget=5)  # small: the budget path runs too


def test_a_flood_of_distinct_user_agents_is_parsed_up_to_the_budget_most_frequent_first() -> None:
    events = [page(user_agent=IPHONE) for _ in range(5)]
    events += [page(user_agent=f"junk-{i}") for i in range(30)]
    out = Enricher(Reference(), ua_parse_budget=3).enrich(unenriched(events))
    assert {r["ua_browser"] for r in rows(out)[:5]} == {"Mobile Safari"}
    assert enrichment_counts(out)["counts"]["ua_skipped"] == 28


def test_old_and_new_lake_files_and_clickhouse_rows_are_read_together(mart_env: Settings) -> None:
    """A lake file and ClickHouse rows from before enrichment (no enriched columns; the
    table created by the DDL before 050) beside enriched ones: DuckDB, the marts and
    ClickHouse read both, the old with the new columns null."""
    day = date(2026, 11, 16)
    at = datetime(2026, 11, 16, 10, tzinfo=UTC)
    old_events = [
        page(
            received=at + timedelta(minutes=i),
            ip="8.8.8.8",
            user_id="u1",
            session_id=None,
            event_id=f"o{i}",
            event_ts=int((at + timedelta(minutes=i)).timestamp() * 1000),
        )
        for i in range(3)
    ]
    new_events = [
        page(
            received=at + timedelta(hours=2, minutes=i),
            ip="81.2.69.160",
            user_agent=IPHONE,
            user_id="u1",
            session_id=None,
            event_id=f"n{i}",
            url="https://shop.example/?utm_source=news",
            event_ts=int((at + timedelta(hours=2, minutes=i)).timestamp() * 1000),
        )
        for i in range(2)
    ] + [
        page(
            received=at,
            user_agent=GOOGLEBOT,
            user_id="bot",
            event_id="b1",
            event_ts=int(at.timestamp() * 1000),
        )
    ]
    lake = mart_env.lake_dir
    old = unenriched(old_events)  # written as the lander wrote it before enrichment
    write_events(lake, old, [OffsetRange("events.raw", 0, 0, 2)])
    new = Enricher(Reference()).enrich(
        unenriched(new_events).set_column(
            landed_schema().get_field_index("kafka_offset") - 0,
            "kafka_offset",
            pa.array([3, 4, 5], pa.int64()),
        )
    )
    write_events(lake, new, [OffsetRange("events.raw", 0, 3, 5)])
    files = sorted(str(p) for p in (lake / "events").rglob("*.parquet"))
    assert len({tuple(pq.read_schema(f).names) for f in files}) == 2  # old and new shapes
    found = duckdb.sql(
        f"SELECT event_id, geo_country, device_class FROM read_parquet({files}, "
        "union_by_name = true) ORDER BY event_id"
    ).fetchall()
    assert found == [
        ("b1", None, "bot"),
        ("n0", "GB", "mobile"),
        ("n1", "GB", "mobile"),
        ("o0", None, None),
        ("o1", None, None),
        ("o2", None, None),
    ]

    # The marts: bots left out of the sessions, counted in usage (billed); the old rows count,
    # both marts reconcile.
    builder = MartBuilder(
        mart_env,
        [
            m
            for m in MartBuilder(mart_env).marts
            if m.name in ("sessions_daily", "customer_usage_daily")
        ],
    )
    parts = {p.mart: p for p in builder.build_day(day)}
    assert all(p.reconciled for p in parts.values()), [
        str(r) for p in parts.values() for r in p.reconciliations
    ]
    with builder.warehouse(read_only=True) as con:
        sessions = con.sql(
            "SELECT session_key, events, pages, country, device_class, utm_source, entry_url "
            "FROM sessions_daily ORDER BY session_key"
        ).fetchall()
        usage = con.sql("SELECT sum(events) FROM customer_usage_daily").fetchall()
    assert usage == [(6,)]  # what was sent is billed, the bot's event too
    assert sessions == [
        ("u1#1", 3, 3, None, None, None, "https://shop.example/"),  # 10:00-10:02
        ("u1#2", 2, 2, "GB", "mobile", "news", "https://shop.example/?utm_source=news"),
    ]

    # ClickHouse: the table as it was before 050, old rows, then the migration, new rows.
    sql_dir = REPO_ROOT / "sql" / "clickhouse"
    before = tmp_sql = mart_env.data_dir / "sql-before"
    tmp_sql.mkdir()
    for f in sorted(sql_dir.glob("*.sql")):
        if f.name < "050":
            (tmp_sql / f.name).write_text(f.read_text())
    ch = ClickHouse(f"chdb://{mart_env.data_dir}/ch", "ep_mixed")
    ch.apply_ddl(before)
    with ch.session() as client:
        client.insert_arrow("ep_mixed.events", old)
    ch.apply_ddl(sql_dir)
    with ch.session() as client:
        client.insert_arrow("ep_mixed.events", new)
        got = client.query(
            "SELECT event_id, geo_country, is_bot, ip FROM ep_mixed.events ORDER BY event_id"
        ).result_rows
    assert got == [
        ("b1", None, True, None),
        ("n0", "GB", False, "81.2.69.0"),
        ("n1", "GB", False, "81.2.69.0"),
        ("o0", None, None, "8.8.8.8"),
        ("o1", None, None, "8.8.8.8"),
        ("o2", None, None, "8.8.8.8"),
    ]
