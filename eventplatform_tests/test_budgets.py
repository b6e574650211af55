"""Budgets: spend counted once, statuses, one pause per exhaustion, resumes, CSV loading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventplatform.budgets.campaigns import (
    CampaignFileError,
    load_campaigns,
    parse_campaigns,
    read_campaigns,
)
from eventplatform.budgets.signals import BudgetController, read_last_signals
from eventplatform.budgets.spend import read_spend
from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform_tests.helpers import decoded_event, land_rows

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HEADER = "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"


@pytest.fixture
def clickhouse(tmp_path: Path, clickhouse_with_ddl) -> ClickHouse:
    return clickhouse_with_ddl(tmp_path / "ch", "ep_budgets")


@pytest.fixture
def control_topic(bootstrap: str, unique: str) -> str:
    topic = f"campaign.control.{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 3, 1, {"cleanup.policy": "compact"})])
    return topic


def land(clickhouse: ClickHouse, events: list[dict], token: str) -> None:
    land_rows(clickhouse, events, token)


def cost_events(
    campaign: str,
    costs: list[float],
    at: datetime = NOW - timedelta(minutes=5),
    kind: str = "impression",
    prefix: str = "e",
    customer: str = "adnet",
) -> list[dict]:
    return [
        decoded_event(
            kind,
            customer,
            at,
            event_id=f"{prefix}-{campaign}-{i}",
            payload={"campaign_id": campaign, "cost": cost, "revenue": cost * 0.7},
        )
        for i, cost in enumerate(costs)
    ]


def load(clickhouse: ClickHouse, rows: str) -> None:
    load_campaigns(clickhouse, parse_campaigns(HEADER + rows))


def test_exhaustion_emits_exactly_one_pause(clickhouse, bootstrap, control_topic) -> None:
    load(
        clickhouse,
        "acme,c1,10,100,USD,2026-01-01,2026-12-31,UTC,adnet\n"
        "acme,c2,1000,100,USD,2026-01-01,2026-12-31,UTC,adnet\n",
    )
    controller = BudgetController(clickhouse, bootstrap, control_topic)
    land(clickhouse, cost_events("c1", [4.0, 4.0]), "b1")
    states, signals = controller.refresh(NOW)
    assert signals == []  # active campaigns need no signal
    assert {s.campaign_id: s.spend_total for s in states} == {"c1": 8.0, "c2": 0.0}

    land(clickhouse, cost_events("c1", [2.5], prefix="f"), "b2")  # 10.5 >= 10
    states, signals = controller.refresh(NOW)
    assert [(s["campaign_id"], s["status"], s["action"]) for s in signals] == [
        ("c1", "exhausted", "pause")
    ]
    assert signals[0]["spend_total"] == 10.5 and signals[0]["total_budget"] == 10.0
    assert "reached budget 10.00" in signals[0]["reason"]
    assert controller.refresh(NOW)[1] == []  # no repeat
    # A fresh controller (a re-run after a crash) reads the topic and sends nothing either.
    assert BudgetController(clickhouse, bootstrap, control_topic).refresh(NOW)[1] == []
    last = read_last_signals(bootstrap, control_topic)
    assert set(last) == {"c1"} and last["c1"]["status"] == "exhausted"


def test_daily_reset_emits_a_resume(clickhouse, bootstrap, control_topic) -> None:
    load(clickhouse, "acme,d1,1000,5,USD,2026-01-01,2026-12-31,Europe/Paris,adnet\n")
    controller = BudgetController(clickhouse, bootstrap, control_topic)
    land(clickhouse, cost_events("d1", [3.0, 2.0], NOW - timedelta(hours=1)), "b1")
    _, signals = controller.refresh(NOW)
    assert [(s["status"], s["spend_today"]) for s in signals] == [("paused_daily", 5.0)]
    # Paris midnight is 23:00 UTC in November: at 23:30 UTC it is a new day there.
    _, signals = controller.refresh(datetime(2026, 11, 23, 23, 30, tzinfo=UTC))
    assert [
        (s["status"], s["action"], s["previous_status"], s["spend_today"]) for s in signals
    ] == [("active", "resume", "paused_daily", 0.0)]


def test_raising_a_budget_resumes(clickhouse, bootstrap, control_topic) -> None:
    load(clickhouse, "acme,r1,5,100,USD,2026-01-01,2026-12-31,UTC,adnet\n")
    controller = BudgetController(clickhouse, bootstrap, control_topic)
    land(clickhouse, cost_events("r1", [6.0]), "b1")
    assert [s["status"] for s in controller.refresh(NOW)[1]] == ["exhausted"]
    load(clickhouse, "acme,r1,50,100,USD,2026-01-01,2026-12-31,UTC,adnet\n")
    assert read_campaigns(clickhouse)[0].total_budget == 50.0  # the reload replaced the row
    assert [(s["status"], s["action"]) for s in controller.refresh(NOW)[1]] == [
        ("active", "resume")
    ]


def test_replaying_a_batch_does_not_change_spend(clickhouse) -> None:
    load(clickhouse, "acme,p1,1000,100,USD,2026-01-01,2026-12-31,UTC,adnet\n")
    events = cost_events("p1", [1.25, 2.5, 0.25], kind="ad_click")
    land(clickhouse, events, "batch-7")
    before = read_spend(clickhouse, NOW)["p1"].total
    land(clickhouse, events, "batch-7")  # the landing job retrying a batch
    land(clickhouse, events[:1], "sender-retry")  # a sender resending one event (same id)
    assert before == read_spend(clickhouse, NOW)["p1"].total == 4.0
    with clickhouse.session() as client:
        rows = client.query("SELECT count() FROM ep_budgets.events").result_rows[0][0]
    assert rows == 4  # the resent event is stored, but billed once


def test_ended_and_scheduled_campaigns(clickhouse, bootstrap, control_topic) -> None:
    load(
        clickhouse,
        "acme,old,10,5,USD,2025-01-01,2025-12-31,UTC,adnet\n"
        "acme,new,10,5,USD,2027-01-01,2027-12-31,UTC,adnet\n",
    )
    states, signals = BudgetController(clickhouse, bootstrap, control_topic).refresh(NOW)
    assert {s.campaign_id: s.status for s in states} == {"old": "ended", "new": "scheduled"}
    assert {s["campaign_id"]: s["action"] for s in signals} == {"old": "pause", "new": "pause"}


def test_bad_campaign_rows_are_reported_by_line_and_nothing_loads(clickhouse) -> None:
    text = HEADER + (
        "acme,ok1,10,5,USD,2026-01-01,2026-12-31,UTC,adnet\n"
        "acme,,ten,5,USD,2026-13-01,2026-12-31,Mars/Olympus,adnet\n"
        "acme,ok1,10,-5,US,2026-06-01,2026-01-01,UTC,adnet\n"
    )
    with pytest.raises(CampaignFileError) as info:
        parse_campaigns(text)
    assert info.value.errors == [
        "line 3: campaign_id is empty",
        "line 3: total_budget must be a number, got 'ten'",
        "line 3: start must be a date YYYY-MM-DD, got '2026-13-01'",
        "line 3: timezone 'Mars/Olympus' is not an IANA time zone",
        "line 4: campaign_id ok1 already on line 2",
        "line 4: daily_budget must be a number >= 0, got '-5'",
        "line 4: end 2026-01-01 is before start 2026-06-01",
        "line 4: currency must be a 3-letter code, got 'US'",
    ]
    assert read_campaigns(clickhouse) == []
    with pytest.raises(CampaignFileError, match="missing column"):
        parse_campaigns("campaign_id,budget\nx,1\n")
