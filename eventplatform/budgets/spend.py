"""Spend per campaign, rolled up from the landed cost-bearing events, and each one's status.

Spend counts an event once even if it was landed or sent twice (grouped by event_id first),
so a replayed batch or a sender's retry never bills twice. Daily spend is summed from
15-minute buckets from the campaign's local midnight, so any IANA time zone (all offsets are
whole quarter hours) resets at its own midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from eventplatform.budgets.campaigns import Campaign
from eventplatform.clickhouse import ClickHouse

COST_EVENTS = ("impression", "ad_click", "conversion")
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
    db = clickhouse.database
    deduplicated = (
        "SELECT campaign_id, event_id, any(cost) AS event_cost, any(event_ts) AS event_time "
        f"FROM {db}.events WHERE event_type IN {COST_EVENTS} AND cost > 0 "
        "AND campaign_id IS NOT NULL GROUP BY campaign_id, event_id"
    )
    recent = now - timedelta(hours=50)  # covers "today" in every time zone
    with clickhouse.session() as client:
        totals = client.query(
            f"SELECT campaign_id, sum(event_cost) FROM ({deduplicated}) GROUP BY campaign_id"
        ).result_rows
        buckets = client.query(
            f"SELECT campaign_id, toStartOfFifteenMinutes(event_time) AS bucket, sum(event_cost) "
            f"FROM ({deduplicated}) WHERE event_time >= %(recent)s GROUP BY campaign_id, bucket",
            parameters={"recent": recent.replace(tzinfo=None)},
        ).result_rows
    by_campaign: dict[str, list[tuple[datetime, float]]] = {}
    for campaign_id, bucket, cost in buckets:
        bucket = bucket.replace(tzinfo=UTC) if bucket.tzinfo is None else bucket
        by_campaign.setdefault(campaign_id, []).append((bucket, cost))
    return {cid: CampaignSpend(total, tuple(by_campaign.get(cid, ()))) for cid, total in totals}


@dataclass(frozen=True)
class CampaignState:
    campaign_id: str
    advertiser: str
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
