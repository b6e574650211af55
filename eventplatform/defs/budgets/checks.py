"""The checks on campaign_budgets: overspend (an error) and pacing (a warning)."""

from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    ResourceParam,
    asset_check,
)

from eventplatform.budgets.campaigns import read_campaigns
from eventplatform.budgets.spend import (
    CampaignState,
    campaign_states,
    overspent,
    pacing_too_fast,
    read_spend,
)
from eventplatform.defs.resources import ClickHouseResource
from eventplatform.settings import Settings

BUDGETS = "campaign_budgets"


def _current_states(clickhouse: ClickHouseResource) -> list[CampaignState]:
    client = clickhouse.get_client()
    now = datetime.now(UTC)
    return campaign_states(read_campaigns(client), read_spend(client, now), now)


@asset_check(
    asset=BUDGETS,
    blocking=False,
    description="No campaign's spend exceeds its total or daily budget by more than "
    "the tolerance (EP_BUDGETS_OVERSPEND_TOLERANCE_PCT).",
)
def no_overspend(
    clickhouse: ClickHouseResource, settings: ResourceParam[Settings]
) -> AssetCheckResult:
    tolerance = settings.budgets.overspend_tolerance_pct
    found = overspent(_current_states(clickhouse), tolerance)
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
    asset=BUDGETS,
    blocking=False,
    description="Warns on active campaigns pacing to run out of today's budget early "
    "(EP_BUDGETS_PACING_WARN_PCT of an even spread).",
)
def pacing_not_too_fast(
    clickhouse: ClickHouseResource, settings: ResourceParam[Settings]
) -> AssetCheckResult:
    warn = settings.budgets.pacing_warn_pct
    fast = pacing_too_fast(_current_states(clickhouse), warn)
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
