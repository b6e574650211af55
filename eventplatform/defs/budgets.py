"""Budgets group: campaign spend and status, pause signals, and the checks that guard them.

The pause path that must take seconds runs inside the landing run, right after each landed
micro-batch (see defs/landing.py); this asset runs the same controller whenever the landed
events change (eager automation), records the statuses for the UI and runs the checks.
"""

from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from eventplatform.budgets.campaigns import read_campaigns
from eventplatform.budgets.signals import BudgetController
from eventplatform.budgets.spend import (
    campaign_states,
    overspent,
    pacing_too_fast,
    read_spend,
)
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.defs.resources import PlatformResource


def _current_states(platform: PlatformResource):
    clickhouse = platform_clickhouse(platform.settings())
    now = datetime.now(UTC)
    return campaign_states(read_campaigns(clickhouse), read_spend(clickhouse, now), now)


@asset(
    group_name="budgets",
    kinds={"clickhouse", "kafka"},
    owners=["team:ad-ops"],
    deps=["events_clickhouse"],
    automation_condition=AutomationCondition.eager(),
    description="Spend per campaign (today in its time zone, and in total; only its owner's "
    "cost events) against its budgets, the status that follows (active, paused_daily, "
    "exhausted, ended, scheduled) and pacing. Status changes are sent to campaign.control "
    "for ad servers.",
)
def campaign_budgets(context: AssetExecutionContext, platform: PlatformResource):
    settings = platform.settings()
    controller = BudgetController(
        platform_clickhouse(platform.settings()),
        settings.kafka.bootstrap,
        settings.kafka.control_topic,
    )
    states, signals = controller.refresh()
    by_status: dict[str, int] = {}
    for s in states:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    for signal in signals:
        context.log.info(f"signal {signal['action']} {signal['campaign_id']}: {signal['reason']}")
    table = "\n".join(
        [
            "| campaign | owner | status | today | daily | total | budget | pacing |",
            "|---|---|---|---|---|---|---|---|",
        ]
        + [
            f"| {s.campaign_id} | {s.owner} | {s.status} | {s.spend_today:.2f} | "
            f"{s.daily_budget:.2f} | {s.spend_total:.2f} | {s.total_budget:.2f} | "
            f"{s.pacing_pct:.0f}% |"
            for s in states
        ]
    )
    return MaterializeResult(
        metadata={
            "campaigns": len(states),
            "spend_total": round(sum(s.spend_total for s in states), 2),
            "spend_today": round(sum(s.spend_today for s in states), 2),
            "signals_sent": len(signals),
            **{f"status_{k}": v for k, v in sorted(by_status.items())},
            "statuses": MetadataValue.md(table),
        }
    )


@asset_check(
    asset=campaign_budgets,
    blocking=False,
    description="No campaign's spend exceeds its total or daily budget by more than "
    "the tolerance (EP_BUDGETS_OVERSPEND_TOLERANCE_PCT).",
)
def no_overspend(platform: PlatformResource) -> AssetCheckResult:
    tolerance = platform.settings().budgets.overspend_tolerance_pct
    found = overspent(_current_states(platform), tolerance)
    return AssetCheckResult(
        passed=not found,
        severity=AssetCheckSeverity.ERROR,
        description=("overspent: " + "; ".join(f"{cid} {what}" for cid, what in found))
        if found
        else f"no campaign over budget by more than {tolerance}%",
        metadata={
            "overspent_campaigns": len(found),
            "tolerance_pct": tolerance,
            "details": MetadataValue.md("\n".join(f"- `{c}`: {w}" for c, w in found) or "none"),
        },
    )


@asset_check(
    asset=campaign_budgets,
    blocking=False,
    description="Warns on active campaigns pacing to run out of today's budget early "
    "(EP_BUDGETS_PACING_WARN_PCT of an even spread).",
)
def pacing_not_too_fast(platform: PlatformResource) -> AssetCheckResult:
    warn = platform.settings().budgets.pacing_warn_pct
    fast = pacing_too_fast(_current_states(platform), warn)
    return AssetCheckResult(
        passed=not fast,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{len(fast)} campaign(s) pacing above {warn:.0f}%: "
            + ", ".join(f"{s.campaign_id} {s.pacing_pct:.0f}%" for s in fast)
        )
        if fast
        else f"no active campaign pacing above {warn:.0f}%",
        metadata={"fast_campaigns": len(fast), "warn_pct": warn},
    )
