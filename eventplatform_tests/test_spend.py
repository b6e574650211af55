"""Incremental spend (``land/spend.py``): each distinct cost event spent exactly once.

Real parts: the session broker, landing processes killed with SIGKILL at the points around
the spend step, embedded ClickHouse. Every test also checks the rollup against the full
recompute from the landed events (``spend_drift``), the reconciliation that guards it.
"""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns
from eventplatform.budgets.spend import read_spend, recompute_spend, spend_drift
from eventplatform.clickhouse import ClickHouse, platform_clickhouse
from eventplatform.events import EventCodec
from eventplatform.events.arrow import events_to_arrow
from eventplatform.kafka.clients import make_producer
from eventplatform.land.sources import build_lander
from eventplatform.land.spend import (
    ensure_backfilled,
    first_cost_events,
    is_backfilled,
    record_spend,
)
from eventplatform.settings import Settings
from eventplatform_tests.helpers import decoded_event, land_rows
from eventplatform_tests.test_land_crash import lander_process

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HEADER = "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"


@pytest.fixture
def clickhouse(tmp_path: Path, clickhouse_with_ddl) -> ClickHouse:
    return clickhouse_with_ddl(tmp_path / "ch", "ep_spend")


def cost(customer: str, campaign: str, event_id: str, value: float, at: datetime = NOW) -> dict:
    return decoded_event(
        "conversion",
        customer,
        at - timedelta(minutes=5),
        event_id=event_id,
        payload={"campaign_id": campaign, "cost": value, "revenue": value},
    )


def load(clickhouse: ClickHouse, rows: str) -> None:
    load_campaigns(clickhouse, parse_campaigns(HEADER + rows))


def totals(clickhouse: ClickHouse) -> dict[str, float]:
    return {cid: round(s.total, 6) for cid, s in read_spend(clickhouse, NOW).items()}


def land_process(shard: int, crash_at: str | None, env: dict[str, str]) -> subprocess.Popen:
    """`eventplatform land --shard N` of a 2-shard events.raw, in small batches."""
    return lander_process(
        crash_at,
        idle_stop_s=5,
        shard=shard,
        EP_LAND_RAW_SHARDS="2",
        EP_LAND_BATCH_MAX_RECORDS="40",
        **env,
    )


def test_kill_dash_nine_around_the_spend_step_spends_each_event_once(topics: Settings) -> None:
    """Copies of the same event on both shards, in later batches, and replays after SIGKILLs
    between the events insert, the spend marks, the spend insert and the commit: every
    distinct event of the owner is spent once; another customer's are never spent."""
    settings = topics
    ch = platform_clickhouse(settings)
    load(ch, "acme,cmp-a,100000,100000,USD,2026-01-01,2027-12-31,UTC,adnet\n")
    producer, codec = make_producer(settings.kafka.bootstrap), EventCodec()
    topic, now = settings.kafka.raw_topic, datetime.now(UTC)

    def send(event: dict, partition: int) -> None:
        producer.produce(topic, partition=partition, value=codec.encode(event))

    expected = 0.0
    for i in range(320):
        value = 0.25 + (i % 4) * 0.5
        event = cost("adnet", "cmp-a", f"e{i}", value, now)
        send(event, i % 4)
        expected += value
        if i % 3 == 0:  # the same event again on a partition of the other shard
            send(event, (i + 1) % 4)
        if i % 10 == 0:  # another customer naming the campaign: never spent
            send(cost("rogue", "cmp-a", f"e{i}", 50.0, now), i % 4)
    assert producer.flush(30) == 0

    env: dict[str, str] = {}  # platform_env set EP_DATA_DIR and the topics in os.environ
    outputs = []
    for shard, crash_at in [
        (0, "after_clickhouse"),
        (1, "after_spend_seen"),
        (0, "after_spend_seen"),
        (1, "after_spend"),
        (0, "after_spend"),
        (1, "after_commit"),
    ]:
        process = land_process(shard, crash_at, env)
        out, _ = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, out
        outputs.append(out)
    for i in range(0, 320, 7):  # a sender's retries, in later batches
        send(cost("adnet", "cmp-a", f"e{i}", 0.25 + (i % 4) * 0.5, now), (i + 2) % 4)
    assert producer.flush(30) == 0

    settings.land.raw_shards = 2
    settings.land.idle_stop_s = 2.0
    replayed = 0
    for shard in (0, 1):
        summary = build_lander(settings, "raw", shard).run()
        assert summary.stopped_because.startswith("idle")
        replayed += summary.replayed_batches
    # Each crash inside a batch was replayed: by the next killed run of its shard, or the last.
    assert replayed + sum("replaying the batch" in out for out in outputs) >= 5, outputs

    assert totals(ch) == {"cmp-a": round(expected, 6)}
    assert spend_drift(ch, NOW) == []
    with ch.session() as client:
        seen = client.query(f"SELECT count() FROM {ch.database}.spend_seen").result_rows[0][0]
        landed = client.query(
            f"SELECT count(), uniqExact(customer_id, event_id) FROM {ch.database}.events"
        ).result_rows[0]
    assert seen == 320 + 32  # adnet's and rogue's distinct cost events, each marked once
    assert landed[1] == 352 and landed[0] > 352  # the copies are landed, not spent


@settings(max_examples=60, deadline=None)
@given(
    copies=st.lists(
        st.tuples(
            st.sampled_from(["acme", "beta"]),  # sender
            st.integers(0, 5),  # event id: few, so that copies are common
            st.integers(0, 3),  # partition
            st.sampled_from([0.5, 1.25, 2.0]),  # cost (a copy may say another)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_a_batch_spends_the_first_copy_of_each_event_by_kafka_position(copies: list) -> None:
    """``first_cost_events`` against the plain definition: per (customer, event id) the copy
    with the least (partition, offset), whatever the order the batch holds them in."""
    events = [cost(sender, "cmp-a", f"e{n}", value) for sender, n, _, value in copies]
    partitions = [partition for _, _, partition, _ in copies]
    offsets = list(range(len(copies), 0, -1))  # the batch holds them newest first
    table = events_to_arrow(events, "events.raw", partitions, offsets, 0)
    expected: dict[str, tuple] = {}
    for (sender, n, _, value), _, _ in sorted(
        zip(copies, partitions, offsets, strict=True), key=lambda c: (c[1], c[2])
    ):
        expected.setdefault(f"{sender}:e{n}", (sender, "cmp-a", value))
    got = {key: v[:3] for key, v in first_cost_events(table).items()}
    assert got == expected


def test_a_resend_with_other_content_never_changes_what_was_spent(clickhouse) -> None:
    """The worst customer resends an id with another cost or campaign, in the same batch or
    a later one: the first copy (by Kafka position, then by batch) is the one spent."""
    load(
        clickhouse,
        "acme,cmp-a,1000,1000,USD,2026-01-01,2026-12-31,UTC,adnet\n"
        "acme,cmp-b,1000,1000,USD,2026-01-01,2026-12-31,UTC,adnet\n",
    )
    first = [cost("adnet", "cmp-a", "x1", 2.0), cost("adnet", "cmp-a", "x1", 900.0)]
    # (land_rows puts every batch at offsets 0..n: the landing times order them, as they do
    # the real batches for the recompute)
    land_rows(clickhouse, first, "batch-1", landed=NOW - timedelta(minutes=2))
    land_rows(clickhouse, [cost("adnet", "cmp-b", "x1", 500.0)], "batch-2", landed=NOW)
    late = NOW + timedelta(minutes=1)
    land_rows(clickhouse, [cost("adnet", "cmp-a", "x1", 700.0)], "batch-3", landed=late)
    assert totals(clickhouse) == {"cmp-a": 2.0}
    assert spend_drift(clickhouse, NOW) == []


def test_a_campaign_loaded_after_its_events_counts_only_its_owners(clickhouse) -> None:
    """Spend is kept per (sender, campaign named), the owner picked when read: events that
    arrived before the campaign was loaded count once it is, others' never."""
    events = [cost("adnet", "late", f"o{i}", 1.5) for i in range(4)]
    events += [cost("rogue", "late", f"o{i}", 40.0) for i in range(4)]
    land_rows(clickhouse, events, "before-load")
    assert totals(clickhouse) == {}
    load(clickhouse, "acme,late,1000,1000,USD,2026-01-01,2026-12-31,UTC,adnet\n")
    land_rows(clickhouse, [cost("adnet", "late", "o9", 1.0)], "after-load")
    assert totals(clickhouse) == {"late": 7.0}
    today = read_spend(clickhouse, NOW)["late"].since(NOW - timedelta(hours=1))
    assert today == 7.0
    assert spend_drift(clickhouse, NOW) == []
    assert (
        recompute_spend(clickhouse, NOW)["late"].buckets
        == read_spend(clickhouse, NOW)["late"].buckets
    )


def test_events_landed_before_the_rollup_are_backfilled_once(clickhouse) -> None:
    """An upgrade: events landed without spend (the old landing), a backfill that crashed
    half-way (faked: rows without the marker); a refresh recomputes until the first landed
    batch backfills from scratch, and a later resend of a backfilled event adds nothing."""
    load(clickhouse, "acme,cmp-a,1000,1000,USD,2026-01-01,2026-12-31,UTC,adnet\n")
    old = [cost("adnet", "cmp-a", f"b{i}", 1.0 + i) for i in range(5)]
    old += [cost("adnet", "cmp-a", "b0", 1.0)]  # a retry the old landing stored twice
    table = events_to_arrow(old, "events.raw", 0, list(range(len(old))), 0)
    db = clickhouse.database
    with clickhouse.session() as client:
        client.insert_arrow(f"{db}.events", table, settings={"insert_deduplication_token": "o"})
        client.insert(
            f"{db}.spend",
            [["total", datetime(1970, 1, 1), "adnet", "cmp-a", 999.0, 1]],
            column_names=["kind", "bucket", "customer_id", "campaign_id", "cost", "events"],
        )
        assert not is_backfilled(client, db)
    assert totals(clickhouse) == {"cmp-a": 15.0}  # not backfilled yet: recomputed
    with clickhouse.session() as client:
        assert not is_backfilled(client, db)
        assert record_spend(client, db, table, "o") == 0  # backfills, then all spent
        assert is_backfilled(client, db)
        assert not ensure_backfilled(client, db)  # once
    land_rows(
        clickhouse, [cost("adnet", "cmp-a", "b3", 4.0), cost("adnet", "cmp-a", "n", 3.0)], "n"
    )
    assert totals(clickhouse) == {"cmp-a": 18.0}
    assert spend_drift(clickhouse, NOW) == []


def test_verify_spend_reports_a_rollup_that_drifted(platform_env: Settings) -> None:
    """`campaigns verify-spend`: exit 0 when the rollup equals the recompute; a row the
    landing did not write (faked: an insert by hand) makes it exit 1 naming the campaign."""
    from click.testing import CliRunner

    from eventplatform.budgets.cli import campaigns

    ch = platform_clickhouse(platform_env)
    load(ch, "acme,cmp-a,1000,1000,USD,2026-01-01,2027-12-31,UTC,adnet\n")
    land_rows(ch, [cost("adnet", "cmp-a", f"v{i}", 2.0) for i in range(3)], "v")
    ok = CliRunner().invoke(campaigns, ["verify-spend"])
    assert ok.exit_code == 0, ok.output
    with ch.session() as client:
        client.insert(
            f"{ch.database}.spend",
            [["total", datetime(1970, 1, 1), "adnet", "cmp-a", 1.0, 1]],
            column_names=["kind", "bucket", "customer_id", "campaign_id", "cost", "events"],
        )
    drifted = CliRunner().invoke(campaigns, ["verify-spend"])
    assert drifted.exit_code == 1
    assert "cmp-a: incremental spend 7.000000, full recompute 6.000000" in drifted.output
