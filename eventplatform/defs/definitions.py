"""Assembles the Definitions from each group's module."""

from __future__ import annotations

from dagster import Definitions

from eventplatform.defs.budgets import campaign_budgets, no_overspend, pacing_not_too_fast
from eventplatform.defs.ingest import kafka_topics
from eventplatform.defs.landing import LAND_SENSORS, LANDING_ASSETS, land_events
from eventplatform.defs.marts import MARTS_ASSETS, MARTS_JOBS, MARTS_SCHEDULES, MARTS_SENSORS
from eventplatform.defs.quality import QUALITY_CHECKS, quality_checks_job, quality_checks_schedule
from eventplatform.defs.resources import PlatformResource


def build_definitions() -> Definitions:
    return Definitions(
        assets=[kafka_topics, *LANDING_ASSETS, campaign_budgets, *MARTS_ASSETS],
        asset_checks=[no_overspend, pacing_not_too_fast, *QUALITY_CHECKS],
        jobs=[land_events, quality_checks_job, *MARTS_JOBS],
        schedules=[quality_checks_schedule, *MARTS_SCHEDULES],
        sensors=[*LAND_SENSORS, *MARTS_SENSORS],
        resources={"platform": PlatformResource()},
    )
