"""Spend per campaign, rolled up from the landed cost-bearing events, and each one's status.

Only the campaign owner's events spend its budget: a cost event counts for campaign C when
its customer_id is C's owner (campaigns.py). A cost event naming a campaign its sender does
not own, or one that is not loaded, is never spent; ``foreign_cost_events`` counts them per
customer for the ``foreign_campaign`` quality check. So one customer cannot exhaust (and so
pause) another's campaign, and a campaign loaded later does not inherit events others sent.

Spend counts an event once even if it was landed or sent twice: events are grouped by
(customer_id, event_id) first, the first landed copy wins, so a replayed batch or a sender's
retry never bills twice, and two customers that both number their events 1, 2, ... keep each
other's events. Daily spend is summed from 15-minute buckets from the campaign's local
midnight, so any IANA time zone (all offsets are whole quarter hours) resets at its own
midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from eventplatform.budgets.campaigns import Campaign
from eventplatform.clickhouse import ClickHouse
from eventplatform.land.spend import first_landed_cost_events, is_backfilled

ACTIVE, PAUSED_DAILY, EXHAUSTED, ENDED, SCHEDULED = (
    "active",
    "paused_daily",
    "exhausted",
    "ended",
    "scheduled",
)
SERVING = {ACTIVE}  # the statuses in which an ad server may serve the campaign


@dataclass(frozen=True)
class CampaignSpend:
    total: float
    buckets: tuple[tuple[datetime, float], ...]  # (15-minute bucket start, UTC; spend) recent

    def since(self, start_utc: datetime) -> float:
        return sum(cost for bucket, cost in self.buckets if bucket >= start_utc)


NO_SPEND = CampaignSpend(0.0, ())


def read_spend(clickhouse: ClickHouse, now: datetime) -> dict[str, CampaignSpend]:
    """Spend per campaign id, counting only the events of the campaign's owner, from the
    incremental rollup (``land/spend.py``): a few rows per campaign, whatever the history."""
    db = clickhouse.database
    owned = f"(customer_id, campaign_id) IN (SELECT owner, campaign_id FROM {db}.campaigns FINAL)"
    recent = now - timedelta(hours=50)  # covers "today" in every time zone
    with clickhouse.session() as client:  # nests in the caller's session, if any
        if not is_backfilled(client, db):
            # Landed before the rollup existed: the first landing batch backfills it (under
            # the landing's serialization); until then, the recompute is the answer.
            return recompute_spend(clickhouse, now)
        totals = client.query(
            f"SELECT campaign_id, sum(cost) FROM {db}.spend WHERE kind = 'total' AND {owned} "
            "GROUP BY campaign_id"
        ).result_rows
        buckets = client.query(
            f"SELECT campaign_id, bucket, sum(cost) FROM {db}.spend WHERE kind = 'bucket' "
            f"AND bucket >= %(recent)s AND {owned} GROUP BY campaign_id, bucket",
            parameters={"recent": _bucket_floor(recent).replace(tzinfo=None)},
        ).result_rows
    return _spend_by_campaign(totals, buckets)


def recompute_spend(clickhouse: ClickHouse, now: datetime) -> dict[str, CampaignSpend]:
    """The same as ``read_spend``, recomputed from every landed cost event: the reference
    that the rollup must equal (tests, ``spend_drift``), and the cost it saves."""
    db = clickhouse.database
    # A filter, not a join: the owned (customer, campaign) pairs are a small set, and the
    # rows outside it are dropped before grouping (a join after it took 4x as long).
    owned = (
        f"AND (customer_id, campaign_id) IN (SELECT owner, campaign_id FROM {db}.campaigns FINAL)"
    )
    deduplicated = (
        "SELECT named_campaign AS campaign_id, event_cost, event_time "
        f"FROM ({first_landed_cost_events(db, owned)})"
    )
    recent = now - timedelta(hours=50)
    with clickhouse.session() as client:
        totals = client.query(
            f"SELECT campaign_id, sum(event_cost) FROM ({deduplicated}) GROUP BY campaign_id"
        ).result_rows
        buckets = client.query(
            f"SELECT campaign_id, toStartOfFifteenMinutes(event_time) AS bucket, sum(event_cost) "
            f"FROM ({deduplicated}) WHERE event_time >= %(recent)s GROUP BY campaign_id, bucket",
            parameters={"recent": _bucket_floor(recent).replace(tzinfo=None)},
        ).result_rows
    return _spend_by_campaign(totals, buckets)


def spend_drift(
    clickhouse: ClickHouse, now: datetime, tolerance: float = 1e-6
) -> list[tuple[str, float, float]]:
    """Campaigns whose rolled-up total differs from the full recompute: (id, rollup,
    recompute). Empty when the rollup is right (sums of floats in another order may differ
    in the last digits: ``tolerance`` is relative)."""
    rolled, full = read_spend(clickhouse, now), recompute_spend(clickhouse, now)
    drift = []
    for cid in sorted(set(rolled) | set(full)):
        a, b = rolled.get(cid, NO_SPEND).total, full.get(cid, NO_SPEND).total
        if abs(a - b) > tolerance * max(1.0, abs(b)):
            drift.append((cid, a, b))
    return drift


def _bucket_floor(ts: datetime) -> datetime:
    """The start of ts's 15-minute bucket (so both reads keep the same buckets)."""
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def _spend_by_campaign(totals: list, buckets: list) -> dict[str, CampaignSpend]:
    by_campaign: dict[str, list[tuple[datetime, float]]] = {}
    for campaign_id, bucket, cost in buckets:
        bucket = bucket.replace(tzinfo=UTC) if bucket.tzinfo is None else bucket
        by_campaign.setdefault(campaign_id, []).append((bucket, cost))
    return {
        cid: CampaignSpend(total, tuple(sorted(by_campaign.get(cid, ())))) for cid, total in totals
    }


@dataclass(frozen=True)
class ForeignCostEvents:
    """A customer's cost events that name campaigns it does not own: never spent."""

    customer_id: str
    events: int
    cost: float
    owned_by_others: int  # of events: naming a campaign another customer owns
    not_loaded: int  # of events: naming a campaign id that is not loaded
    campaigns: tuple[str, ...]  # a few of the campaign ids named (at most 10)


def foreign_cost_events(
    clickhouse: ClickHouse, since: datetime, until: datetime
) -> list[ForeignCostEvents]:
    """Per customer, the distinct cost events received in [since, until) that name a
    campaign the sender does not own, against the campaigns loaded now."""
    db = clickhouse.database
    window = "AND received_ts >= %(since)s AND received_ts < %(until)s"
    sql = (
        "SELECT d.customer_id, count(), sum(d.event_cost), countIf(c.owner != ''), "
        "countIf(c.owner = ''), groupUniqArray(10)(d.named_campaign) "
        f"FROM ({first_landed_cost_events(db, window)}) AS d "
        f"LEFT JOIN (SELECT campaign_id, owner FROM {db}.campaigns FINAL) AS c "
        "ON c.campaign_id = d.named_campaign "
        "WHERE c.owner != d.customer_id GROUP BY d.customer_id ORDER BY d.customer_id"
    )
    bounds = {
        "since": since.astimezone(UTC).replace(tzinfo=None),
        "until": until.astimezone(UTC).replace(tzinfo=None),
    }
    with clickhouse.session() as client:
        rows = client.query(sql, parameters=bounds).result_rows
    return [
        ForeignCostEvents(customer, n, round(cost, 6), others, unknown, tuple(sorted(names)))
        for customer, n, cost, others, unknown, names in rows
    ]


@dataclass(frozen=True)
class CampaignState:
    campaign_id: str
    advertiser: str
    owner: str
    status: str
    reason: str
    spend_total: float
    spend_today: float
    total_budget: float
    daily_budget: float
    currency: str
    pacing_pct: float  # today's spend against an even spread of the daily budget so far


def local_midnight_utc(timezone: str, now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(timezone))
    midnight = datetime(local.year, local.month, local.day, tzinfo=ZoneInfo(timezone))
    return midnight.astimezone(UTC)


def campaign_state(campaign: Campaign, spend: CampaignSpend, now: datetime) -> CampaignState:
    tz = ZoneInfo(campaign.timezone)
    local_today = now.astimezone(tz).date()
    midnight = local_midnight_utc(campaign.timezone, now)
    today = spend.since(midnight)
    day_elapsed = max((now - midnight).total_seconds() / 86400, 1 / 96)
    pacing = 100.0 * today / (campaign.daily_budget * day_elapsed) if campaign.daily_budget else 0
    if local_today < campaign.start_date:
        status, reason = SCHEDULED, f"starts {campaign.start_date}"
    elif local_today > campaign.end_date:
        status, reason = ENDED, f"ended {campaign.end_date}"
    elif spend.total >= campaign.total_budget:
        status = EXHAUSTED
        reason = f"total spend {spend.total:.2f} reached budget {campaign.total_budget:.2f}"
    elif today >= campaign.daily_budget:
        status = PAUSED_DAILY
        reason = f"spend today {today:.2f} reached daily budget {campaign.daily_budget:.2f}"
    else:
        status, reason = ACTIVE, "within budget"
    return CampaignState(
        campaign.campaign_id,
        campaign.advertiser,
        campaign.owner,
        status,
        reason,
        round(spend.total, 6),
        round(today, 6),
        campaign.total_budget,
        campaign.daily_budget,
        campaign.currency,
        round(pacing, 1),
    )


def campaign_states(
    campaigns: list[Campaign], spend: dict[str, CampaignSpend], now: datetime
) -> list[CampaignState]:
    return [campaign_state(c, spend.get(c.campaign_id, NO_SPEND), now) for c in campaigns]


def overspent(states: list[CampaignState], tolerance_pct: float) -> list[tuple[str, str]]:
    """Campaigns whose spend passed a budget by more than the tolerance: (id, what and how much)."""
    factor = 1 + tolerance_pct / 100
    found = []
    for s in states:
        if s.spend_total > s.total_budget * factor:
            found.append(
                (
                    s.campaign_id,
                    f"total {s.spend_total:.2f} > budget "
                    f"{s.total_budget:.2f} (+{s.spend_total - s.total_budget:.2f} "
                    f"{s.currency})",
                )
            )
        if s.spend_today > s.daily_budget * factor:
            found.append(
                (
                    s.campaign_id,
                    f"today {s.spend_today:.2f} > daily budget "
                    f"{s.daily_budget:.2f} (+{s.spend_today - s.daily_budget:.2f} "
                    f"{s.currency})",
                )
            )
    return found


def pacing_too_fast(states: list[CampaignState], warn_pct: float) -> list[CampaignState]:
    """Active campaigns spending fast enough to run out of today's budget early."""
    return [s for s in states if s.status == ACTIVE and s.pacing_pct > warn_pct]
