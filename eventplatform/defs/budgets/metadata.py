"""What the UI shows of a budget controller run, wherever it ran (asset or landing run)."""

from dagster import MetadataValue

from eventplatform.budgets.spend import CampaignState


def budget_metadata(states: list[CampaignState], signals: list[dict]) -> dict:
    """Counts, totals and a status table per campaign, for a materialization or observation."""
    by_status: dict[str, int] = {}
    for s in states:
        by_status[s.status] = by_status.get(s.status, 0) + 1
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
    return {
        "campaigns": len(states),
        "spend_total": round(sum(s.spend_total for s in states), 2),
        "spend_today": round(sum(s.spend_today for s in states), 2),
        "signals_sent": len(signals),
        **{f"status_{k}": v for k, v in sorted(by_status.items())},
        "statuses": MetadataValue.md(table),
    }
