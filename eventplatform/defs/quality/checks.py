"""The quality checks: each plain function of eventplatform/quality as an asset check.

Failures go to the alert sinks with a link to the run. They run together in the
`quality_checks` job (``jobs.py``), every five minutes.
"""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    ResourceParam,
    asset_check,
)

from eventplatform.defs.resources import ClickHouseResource, KafkaResource
from eventplatform.quality import bots, checks
from eventplatform.quality.alerts import AlertRouter, LogFileSink, WebhookSink
from eventplatform.quality.kafka_stats import dead_letters_since, messages_since
from eventplatform.quality.lag_samples import consumer_lag_outcome
from eventplatform.settings import Settings

LANDED = "events_clickhouse"
TOPICS = "kafka_topics"


def _router(settings: Settings) -> AlertRouter:
    q = settings.quality
    sinks = [LogFileSink(settings.alert_log_file)]
    if q.alert_webhook_url:
        sinks.append(WebhookSink(q.alert_webhook_url, q.alert_webhook_format))
    return AlertRouter(
        sinks, settings.data_dir / "alerts_state.json", timedelta(minutes=q.alert_cooldown_minutes)
    )


def _result(
    context: AssetCheckExecutionContext,
    settings: Settings,
    asset: str,
    outcome: checks.CheckOutcome,
) -> AssetCheckResult:
    """Route the outcome to the alert sinks, and report it to Dagster."""
    run_url = f"{settings.quality.dagster_url}/runs/{context.op_execution_context.run_id}"
    alert = _router(settings).route(outcome, asset, run_url)
    if alert is not None:
        context.log.info(f"alert sent: {alert.status} {alert.check}: {alert.summary}")
    evidence = "\n".join(f"- {line}" for line in outcome.evidence) or "none"
    return AssetCheckResult(
        passed=outcome.passed,
        severity=AssetCheckSeverity.ERROR
        if outcome.severity == "ERROR"
        else AssetCheckSeverity.WARN,
        description=outcome.summary,
        metadata={
            **{k: v for k, v in outcome.metadata.items() if isinstance(v, (int, float, str))},
            "evidence": MetadataValue.md(evidence),
        },
    )


def _landed_check(name: str, fn, description: str):
    @asset_check(asset=LANDED, name=name, description=description, blocking=False)
    def _check(
        context: AssetCheckExecutionContext,
        clickhouse: ClickHouseResource,
        settings: ResourceParam[Settings],
    ):
        outcome = fn(clickhouse.get_client(), settings.quality, datetime.now(UTC))
        return _result(context, settings, LANDED, outcome)

    return _check


freshness = _landed_check(
    "freshness",
    checks.freshness,
    "Each customer with traffic in the lookback has landed events newer than "
    "EP_QUALITY_FRESHNESS_MINUTES (overridable per customer).",
)
volume_anomaly = _landed_check(
    "volume_anomaly",
    checks.volume_anomaly,
    "Events per customer in the last complete hour against the median of the same hour on "
    "previous days: spikes and drops beyond the configured factors.",
)
duplicate_rate = _landed_check(
    "duplicate_rate",
    checks.duplicate_rate,
    "Share of landed events whose event_id was already landed, per customer, in the window.",
)
click_fraud = _landed_check(
    "click_fraud",
    checks.click_fraud,
    "Click-through rate per site and campaign above EP_QUALITY_CTR_MAX, and ad-click bursts "
    "from a single IP or user.",
)
foreign_campaign = _landed_check(
    "foreign_campaign",
    checks.foreign_campaign,
    "Cost events naming a campaign their sender does not own (another customer's, or not "
    "loaded), per customer, in the window: never spent, so one customer cannot use another's "
    "budget; an error when another customer's campaign is named.",
)
hot_keys = _landed_check(
    "hot_keys",
    checks.hot_keys,
    "One customer taking more than its share of traffic, or one user or campaign most of a "
    "customer's events.",
)

bot_share = _landed_check(
    "bot_share",
    bots.bot_share,
    "Share of each customer's landed events flagged is_bot by enrichment (user agent) in the "
    "window, above EP_QUALITY_BOT_SHARE_MAX (overridable per customer).",
)


@asset_check(
    asset=TOPICS,
    blocking=False,
    description="Dead letters against accepted events over the window, with reasons, "
    "overall and per customer.",
)
def dlq_rate(
    context: AssetCheckExecutionContext,
    clickhouse: ClickHouseResource,
    kafka: KafkaResource,
    settings: ResourceParam[Settings],
):
    k, q = kafka, settings.quality
    now = datetime.now(UTC)
    since = now - timedelta(minutes=q.window_minutes)
    since_ms = int(since.timestamp() * 1000)
    sample = dead_letters_since(k.bootstrap, k.dlq_topic, since_ms)
    accepted = sum(
        messages_since(k.bootstrap, t, since_ms) for t in (k.raw_topic, k.overflow_topic)
    )
    # Per customer: a small customer whose sender breaks barely moves the overall rate.
    by_customer = checks.events_per_customer(clickhouse.get_client(), since, now)
    return _result(context, settings, TOPICS, checks.dlq_rate(sample, accepted, q, by_customer))


@asset_check(
    asset=TOPICS,
    blocking=False,
    description="Unknown event types or fields rejected, unknown writer schemas, or a "
    "new schema version appearing in the window.",
)
def schema_drift(
    context: AssetCheckExecutionContext,
    clickhouse: ClickHouseResource,
    kafka: KafkaResource,
    settings: ResourceParam[Settings],
):
    k, q = kafka, settings.quality
    now = datetime.now(UTC)
    since_ms = int((now - timedelta(minutes=q.window_minutes)).timestamp() * 1000)
    sample = dead_letters_since(k.bootstrap, k.dlq_topic, since_ms)
    outcome = checks.schema_drift(clickhouse.get_client(), sample, q, now)
    return _result(context, settings, TOPICS, outcome)


@asset_check(
    asset=TOPICS,
    blocking=False,
    description="The landing consumer's lag: above EP_QUALITY_LAG_MAX_MESSAGES, or "
    "growing at every sample for EP_QUALITY_LAG_GROWING_MINUTES.",
)
def consumer_lag_check(
    context: AssetCheckExecutionContext,
    clickhouse: ClickHouseResource,
    kafka: KafkaResource,
    settings: ResourceParam[Settings],
):
    outcome = consumer_lag_outcome(
        clickhouse.get_client(),
        kafka.bootstrap,
        kafka.landing_group,
        kafka.event_topics,
        settings.quality,
        datetime.now(UTC),
    )
    return _result(context, settings, TOPICS, outcome)
