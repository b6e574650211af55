"""Tenant isolation of budgets (issue 13, item 3): a campaign belongs to one customer.

Another customer's cost events naming it are never spent, cannot pause it and are counted
per sender by the ``foreign_campaign`` check; event ids are the sender's, so spend and marts
deduplicate on (customer_id, event_id). Real parts throughout: embedded ClickHouse, the
session broker, the collector over HTTP and a Dagster landing run in the end-to-end test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eventplatform.budgets.campaigns import (
    CampaignFileError,
    CampaignOwnerError,
    load_campaigns,
    parse_campaigns,
    read_campaigns,
)
from eventplatform.budgets.signals import BudgetController, read_last_signals
from eventplatform.budgets.spend import foreign_cost_events, read_spend
from eventplatform.clickhouse import ClickHouse, platform_clickhouse
from eventplatform.collect.customers import CustomerStore
from eventplatform.events.examples import example_event
from eventplatform.marts.build import MartBuilder
from eventplatform.quality import checks
from eventplatform.settings import REPO_ROOT, QualitySettings, Settings
from eventplatform_tests.helpers import decoded_event, land_rows
from eventplatform_tests.marts_data import D1, at
from eventplatform_tests.marts_data import land as land_in_lake
from eventplatform_tests.test_budgets import control_topic  # noqa: F401 - fixture
from eventplatform_tests.test_collector import auth, running_collector

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
SENT = NOW - timedelta(minutes=5)
# No owner column: the advertiser is the owner (the rule for older files).
LEGACY_HEADER = "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone\n"
HEADER = LEGACY_HEADER.rstrip("\n") + ",owner\n"
VICTIM = "victim,victim-cmp,100,1000,USD,2026-01-01,2026-12-31,UTC\n"
QUALITY = QualitySettings(window_minutes=60)


@pytest.fixture
def clickhouse(tmp_path: Path, clickhouse_with_ddl) -> ClickHouse:
    return clickhouse_with_ddl(tmp_path / "ch", "ep_isolation")


def conversions(customer: str, campaign: str, costs: list[float], ids: list[str]) -> list[dict]:
    return [
        decoded_event(
            "conversion",
            customer,
            SENT,
            event_id=event_id,
            payload={"campaign_id": campaign, "cost": cost, "revenue": cost / 2},
        )
        for event_id, cost in zip(ids, costs, strict=True)
    ]


def test_a_foreign_customer_cannot_spend_or_pause_anothers_campaign(
    clickhouse: ClickHouse,
    bootstrap: str,
    control_topic: str,  # noqa: F811
) -> None:
    """The reproduction of issue 13: rogue's 8 x 50 against victim's budget of 100. Rogue
    lands first and reuses victim's event ids: a dedup key without the customer would let
    rogue's copies stand in for victim's events (and hide victim's real spend)."""
    load_campaigns(clickhouse, parse_campaigns(LEGACY_HEADER + VICTIM))
    assert read_campaigns(clickhouse)[0].owner == "victim"
    ids = [str(i) for i in range(1, 9)]
    land_rows(clickhouse, conversions("rogue", "victim-cmp", [50.0] * 8, ids), "rogue")
    land_rows(clickhouse, conversions("victim", "victim-cmp", [10.0, 5.0], ids[:2]), "victim")

    states, signals = BudgetController(clickhouse, bootstrap, control_topic).refresh(NOW)
    assert [(s.campaign_id, s.owner, s.status, s.spend_total) for s in states] == [
        ("victim-cmp", "victim", "active", 15.0)
    ]
    assert signals == [] and read_last_signals(bootstrap, control_topic) == {}
    assert read_spend(clickhouse, NOW)["victim-cmp"].total == 15.0

    outcome = checks.foreign_campaign(clickhouse, QUALITY, NOW)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.evidence == [
        "rogue: 8 cost events (400) naming campaigns it does not own "
        "(8 another customer's, 0 not loaded): victim-cmp"
    ]
    assert outcome.metadata["by_customer"] == {"rogue": 8}
    assert outcome.metadata["foreign_cost"] == 400.0


def test_a_campaign_loaded_later_does_not_inherit_foreign_events(
    clickhouse: ClickHouse,
    bootstrap: str,
    control_topic: str,  # noqa: F811
) -> None:
    land_rows(clickhouse, conversions("rogue", "late-cmp", [60.0, 60.0], ["r1", "r2"]), "r")
    # Not loaded yet: not spent, and the check warns (unbilled spend), naming the sender.
    early = checks.foreign_campaign(clickhouse, QUALITY, NOW)
    assert not early.passed and early.severity == "WARN"
    assert early.evidence == [
        "rogue: 2 cost events (120) naming campaigns it does not own "
        "(0 another customer's, 2 not loaded): late-cmp"
    ]

    load_campaigns(
        clickhouse,
        parse_campaigns(
            HEADER + "Victim Inc,late-cmp,100,1000,USD,2026-01-01,2026-12-31,UTC,victim\n"
        ),
    )
    land_rows(clickhouse, conversions("victim", "late-cmp", [7.0], ["v1"]), "v")
    states, signals = BudgetController(clickhouse, bootstrap, control_topic).refresh(NOW)
    assert [(s.campaign_id, s.status, s.spend_total) for s in states] == [
        ("late-cmp", "active", 7.0)
    ]
    assert signals == []
    late = checks.foreign_campaign(clickhouse, QUALITY, NOW)
    assert not late.passed and late.severity == "ERROR"
    assert late.metadata["owned_by_others"] == 2 and late.metadata["not_loaded"] == 0


def test_two_customers_sharing_event_ids_are_both_spent(clickhouse: ClickHouse) -> None:
    load_campaigns(
        clickhouse,
        parse_campaigns(
            HEADER
            + "A,cmp-a,1000,1000,USD,2026-01-01,2026-12-31,UTC,alpha\n"
            + "B,cmp-b,1000,1000,USD,2026-01-01,2026-12-31,UTC,beta\n"
        ),
    )
    ids = ["1", "2", "3"]
    alpha = conversions("alpha", "cmp-a", [1.0, 2.0, 4.0], ids)
    beta = conversions("beta", "cmp-b", [8.0, 16.0, 32.0], ids)
    land_rows(clickhouse, alpha + beta, "both")
    land_rows(clickhouse, alpha[:1] + beta[:2], "sender-retries")  # same ids: billed once
    spend = read_spend(clickhouse, NOW)
    assert (spend["cmp-a"].total, spend["cmp-b"].total) == (7.0, 56.0)
    assert checks.foreign_campaign(clickhouse, QUALITY, NOW).passed
    assert foreign_cost_events(clickhouse, NOW - timedelta(hours=1), NOW) == []


CUSTOMERS, IDS, CAMPAIGNS = ("alpha", "beta", "gamma"), ("1", "2", "3", "4"), 4
SENDERS = [(c, i) for c in CUSTOMERS for i in IDS]


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory: pytest.TempPathFactory) -> ClickHouse:
    ch = ClickHouse(f"chdb://{tmp_path_factory.mktemp('fuzz')}/ch", "ep_fuzz")
    ch.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
    return ch


@pytest.fixture
def fuzz_clickhouse(fuzz_engine: ClickHouse) -> Iterator[ClickHouse]:
    """The engine held open for the test's examples (each step's session nests in this one)."""
    with fuzz_engine.session():
        yield fuzz_engine


@hsettings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    owners=st.lists(st.sampled_from(CUSTOMERS), min_size=CAMPAIGNS, max_size=CAMPAIGNS),
    # each sender's event: the campaign it names (CAMPAIGNS = one not loaded) and its cost
    content=st.lists(
        st.tuples(st.integers(0, CAMPAIGNS), st.integers(1, 9)),
        min_size=len(SENDERS),
        max_size=len(SENDERS),
    ),
    sent=st.lists(st.sampled_from(SENDERS), min_size=1, max_size=30),  # repeats: retries
)
def test_spend_is_exactly_the_owners_distinct_events(
    fuzz_clickhouse: ClickHouse, owners: list[str], content: list, sent: list
) -> None:
    """Bounded fuzz: any customers, shared event ids, retries and foreign campaigns; spend per
    campaign is the sum over the owner's distinct (customer_id, event_id), and every other
    distinct cost event is in the foreign figure of its sender."""
    ch = fuzz_clickhouse
    with ch.session() as client:
        for table in ("events", "campaigns", "spend", "spend_seen"):
            client.command(f"TRUNCATE TABLE ep_fuzz.{table}")
    rows = "".join(
        f"x,cmp-{k},1000,1000,USD,2026-01-01,2026-12-31,UTC,{owner}\n"
        for k, owner in enumerate(owners)
    )
    load_campaigns(ch, parse_campaigns(HEADER + rows))
    what = dict(zip(SENDERS, content, strict=True))
    events = [
        conversions(customer, f"cmp-{what[(customer, i)][0]}", [what[(customer, i)][1]], [i])[0]
        for customer, i in sent
    ]
    land_rows(ch, events, "fuzz")
    expected: dict[str, float] = {}
    foreign: dict[str, int] = {}
    for customer, i in set(sent):
        k, cost = what[(customer, i)]
        if k < CAMPAIGNS and owners[k] == customer:
            expected[f"cmp-{k}"] = expected.get(f"cmp-{k}", 0) + cost
        else:
            foreign[customer] = foreign.get(customer, 0) + 1
    assert {c: s.total for c, s in read_spend(ch, NOW).items()} == expected
    found = foreign_cost_events(ch, NOW - timedelta(hours=1), NOW)
    assert {f.customer_id: f.events for f in found} == foreign


def test_marts_count_both_customers_sharing_event_ids(mart_env: Settings) -> None:
    ch = ClickHouse(mart_env.clickhouse_dsn, mart_env.clickhouse.database)
    ch.apply_ddl(mart_env.paths.sql_dir / "clickhouse")
    load_campaigns(
        ch,
        parse_campaigns(HEADER + "Alpha Ads,cmp-a,1000,100,USD,2026-01-01,2026-12-31,UTC,alpha\n"),
    )

    def impressions(customer: str) -> list[dict]:
        ms = int(at(D1, 9).timestamp() * 1000)
        return [
            decoded_event(
                "impression",
                customer,
                at(D1, 9),
                event_id=str(i),
                event_ts=ms,
                payload={"campaign_id": "cmp-a", "cost": 0.5, "revenue": 0.25},
            )
            for i in range(1, 4)
        ]

    land_in_lake(mart_env.lake_dir, impressions("alpha") + impressions("beta"))
    land_in_lake(mart_env.lake_dir, impressions("beta")[:1])  # beta retries its event "1"
    computed = MartBuilder(mart_env, clickhouse=ch).compute_day(
        D1, ["campaign_performance_daily", "customer_usage_daily"]
    )
    performance, perf_part = computed["campaign_performance_daily"]
    usage, usage_part = computed["customer_usage_daily"]
    rows = performance.select(["customer_id", "advertiser", "impressions", "cost"]).to_pylist()
    assert rows == [
        # beta names alpha's campaign: counted as beta's traffic, without alpha's advertiser
        {"customer_id": "alpha", "advertiser": "Alpha Ads", "impressions": 3, "cost": 1.5},
        {"customer_id": "beta", "advertiser": None, "impressions": 3, "cost": 1.5},
    ]
    assert usage.select(["customer_id", "events", "duplicates_dropped"]).to_pylist() == [
        {"customer_id": "alpha", "events": 3, "duplicates_dropped": 0},
        {"customer_id": "beta", "events": 3, "duplicates_dropped": 1},
    ]
    for part in (perf_part, usage_part):
        assert all(r.passed for r in part.reconciliations), [str(r) for r in part.reconciliations]


def test_loading_never_moves_a_campaign_to_another_owner(clickhouse: ClickHouse) -> None:
    load_campaigns(clickhouse, parse_campaigns(LEGACY_HEADER + VICTIM))
    takeover = parse_campaigns(
        HEADER
        + "victim,victim-cmp,100000,1000,USD,2026-01-01,2026-12-31,UTC,rogue\n"
        + "rogue,rogue-cmp,10,10,USD,2026-01-01,2026-12-31,UTC,rogue\n"
    )
    with pytest.raises(CampaignOwnerError) as info:
        load_campaigns(clickhouse, takeover)
    assert info.value.changes == ["victim-cmp: owned by victim, the file says rogue"]
    assert [(c.campaign_id, c.owner, c.total_budget) for c in read_campaigns(clickhouse)] == [
        ("victim-cmp", "victim", 100.0)
    ]  # nothing loaded, not even the valid row
    with pytest.raises(CampaignFileError) as bad:
        parse_campaigns(HEADER + "acme,c1,1,1,USD,2026-01-01,2026-12-31,UTC, \n")
    assert bad.value.errors == ["line 2: owner is empty"]
    with pytest.raises(CampaignFileError) as legacy:
        parse_campaigns(
            LEGACY_HEADER
            + ",c1,1,1,USD,2026-01-01,2026-12-31,UTC\n"
            + "Acme Corp,c2,1,1,USD,2026-01-01,2026-12-31,UTC\n"
        )
    assert legacy.value.errors == [
        "line 2: advertiser (the owner: no owner column) is empty",
        "line 3: advertiser (the owner: no owner column) 'Acme Corp' is not a customer id "
        "(1-63 lowercase letters, digits or '-'); add an owner column",
    ]
    with pytest.raises(CampaignFileError) as display_name:
        parse_campaigns(HEADER + "acme,c1,1,1,USD,2026-01-01,2026-12-31,UTC,Victim Inc\n")
    assert display_name.value.errors == [
        "line 2: owner 'Victim Inc' is not a customer id (1-63 lowercase letters, digits or '-')"
    ]


def test_campaigns_loaded_before_the_owner_column_are_owned_by_their_advertiser(
    tmp_path: Path,
) -> None:
    """The migration is additive: rows of the old table read their advertiser as the owner."""
    old_ddl = tmp_path / "old"
    old_ddl.mkdir()
    (old_ddl / "010_campaigns.sql").write_text(
        (REPO_ROOT / "sql" / "clickhouse" / "010_campaigns.sql").read_text()
    )
    ch = ClickHouse(f"chdb://{tmp_path}/ch", "ep_migrate")
    ch.apply_ddl(old_ddl)
    with ch.session() as client:
        client.command(
            "INSERT INTO ep_migrate.campaigns (campaign_id, advertiser, total_budget, "
            "daily_budget, currency, start_date, end_date, timezone, version) VALUES "
            "('old-cmp', 'adnet-00', 10, 5, 'USD', '2026-01-01', '2026-12-31', 'UTC', 1)"
        )
    ch.apply_ddl(REPO_ROOT / "sql" / "clickhouse")
    ch.apply_ddl(REPO_ROOT / "sql" / "clickhouse")  # idempotent
    assert [(c.campaign_id, c.owner) for c in read_campaigns(ch)] == [("old-cmp", "adnet-00")]


def test_rogue_posting_through_the_collector_spends_nothing_of_victims_budget(
    topics: Settings, tmp_path: Path
) -> None:
    """The scenario end to end, as reproduced: the CLI loads the campaign, both customers
    post over HTTP with their own keys, a Dagster landing run lands the events and runs the
    pause path after each batch, and `campaigns status` shows victim's own spend only."""
    settings = topics
    store = CustomerStore(settings.customers_db)
    keys = {name: store.add(name) for name in ("victim", "rogue")}
    today = datetime.now(UTC).date()
    csv_file = tmp_path / "campaigns.csv"
    csv_file.write_text(
        HEADER + f"Victim Inc,victim-cmp,100,1000,USD,{today - timedelta(days=1)},"
        f"{today + timedelta(days=5)},UTC,victim\n"
    )
    cli = [sys.executable, "-m", "eventplatform.cli", "campaigns"]
    loaded = subprocess.run(
        [*cli, "load", str(csv_file)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert loaded.returncode == 0 and loaded.stderr == "", loaded.stderr

    def batch(cost: float, n: int) -> list[dict]:
        """Conversions naming victim's campaign; both senders number them conv-0, conv-1..."""
        payload = {**example_event("conversion")["payload"], "campaign_id": "victim-cmp"}
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        return [
            example_event(
                "conversion",
                event_id=f"conv-{i}",
                event_ts=now_ms,
                payload={**payload, "cost": cost},
            )
            for i in range(n)
        ]

    with running_collector(settings) as collector:  # 50 is under the per-event cost cap
        for customer, events in (("rogue", batch(50.0, 8)), ("victim", batch(10.0, 2))):
            answer = httpx.post(
                f"{collector.url}/v1/events", json=events, headers=auth(keys[customer]), timeout=60
            )
            assert answer.status_code == 202 and answer.json()["accepted"] == len(events)
    # The collector's exit (SIGTERM) flushed every accepted event to the broker.

    from eventplatform_tests.test_land_dagster import land_raw_shard_in_process

    with DagsterInstance.ephemeral() as instance:
        land_raw_shard_in_process(instance, settings)
    with platform_clickhouse(settings).session() as client:
        landed = client.query(
            f"SELECT customer_id, count() FROM {settings.clickhouse.database}.events "
            "GROUP BY customer_id ORDER BY customer_id"
        ).result_rows
    assert [tuple(r) for r in landed] == [("rogue", 8), ("victim", 2)]
    assert "victim-cmp" not in read_last_signals(
        settings.kafka.bootstrap, settings.kafka.control_topic
    )
    status = subprocess.run(
        [*cli, "status"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("victim-cmp"))
    assert line.split()[:3] == ["victim-cmp", "victim", "active"] and " 20.00 " in line
    assert "not spent: rogue sent 8 cost events (400.00)" in status.stdout
    outcome = checks.foreign_campaign(
        platform_clickhouse(settings), settings.quality, datetime.now(UTC)
    )
    assert not outcome.passed and outcome.evidence[0].startswith("rogue: 8 cost events (400)")
