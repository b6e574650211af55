"""The campaign_budgets asset.

The pause path that must take seconds runs inside the landing run, right after each landed
micro-batch (see defs/ingest/landing.py, which records an observation of this asset each
time); this asset runs the same controller whenever the landed events change (eager
automation), records the statuses for the UI and runs the checks (``checks.py``).
"""

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    MaterializeResult,
    asset,
)

from eventplatform.budgets.signals import BudgetController
from eventplatform.defs.budgets.metadata import budget_metadata
from eventplatform.defs.resources import ClickHouseResource, KafkaResource


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
def campaign_budgets(
    context: AssetExecutionContext, clickhouse: ClickHouseResource, kafka: KafkaResource
) -> MaterializeResult:
    controller = BudgetController(clickhouse.get_client(), kafka.bootstrap, kafka.control_topic)
    states, signals = controller.refresh()
    for signal in signals:
        context.log.info(f"signal {signal['action']} {signal['campaign_id']}: {signal['reason']}")
    return MaterializeResult(metadata=budget_metadata(states, signals))


# On by default (Dagster's own automation sensor starts stopped): the eager condition above is
# how the UI's budget statuses follow the landed events between landing runs.
budgets_automation = AutomationConditionSensorDefinition(
    "budgets_automation",
    target=AssetSelection.groups("budgets"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    emit_backfills=False,
    description="Runs campaign_budgets when the landed events changed (eager).",
)
