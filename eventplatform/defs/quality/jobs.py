"""The `quality_checks` job (every check on the landed events and the topics) and its
five-minute schedule."""

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from eventplatform.defs.quality.checks import LANDED, TOPICS

quality_checks_job = define_asset_job(
    "quality_checks",
    # Every check on these two assets is a quality check: no list to keep up to date.
    selection=AssetSelection.checks_for_assets(LANDED, TOPICS),
    description="Every quality check over the landed events and the topics.",
)

quality_checks_schedule = ScheduleDefinition(
    job=quality_checks_job,
    cron_schedule="*/5 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
)
