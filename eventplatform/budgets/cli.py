"""`eventplatform campaigns ...`: load budgets, see statuses, watch signals as an ad server."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import click
import orjson
from confluent_kafka import OFFSET_BEGINNING

from eventplatform.budgets.campaigns import (
    CampaignFileError,
    CampaignOwnerError,
    load_campaigns,
    parse_campaigns,
)
from eventplatform.clickhouse import platform_clickhouse
from eventplatform.kafka.clients import make_consumer
from eventplatform.settings import get_settings

SAMPLE_CAMPAIGNS = Path(__file__).resolve().parent / "sample_campaigns.csv"


@click.group()
def campaigns() -> None:
    """Campaigns and budgets; pause/resume signals for ad servers."""


@campaigns.command("load")
@click.argument(
    "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option("--sample", is_flag=True, help=f"Load the sample file ({SAMPLE_CAMPAIGNS.name}).")
def load(csv_file: Path | None, sample: bool) -> None:
    """Upsert campaigns from CSV (columns: advertiser,campaign_id,total_budget,daily_budget,
    currency,start,end,timezone and optionally owner, the customer id whose events spend the
    budget; without it the advertiser is the owner). Any bad row, or a row that would give an
    existing campaign another owner: all reported, nothing loaded."""
    if not csv_file and not sample:
        raise click.UsageError("give a CSV file or --sample")
    path = SAMPLE_CAMPAIGNS if sample else csv_file
    try:
        parsed = parse_campaigns(path.read_text())
    except CampaignFileError as exc:
        click.secho(f"error: {path}: {exc}", fg="red", err=True)
        sys.exit(1)
    settings = get_settings()
    try:
        loaded = load_campaigns(platform_clickhouse(settings), parsed)
    except CampaignOwnerError as exc:
        click.secho(f"error: {path}: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"loaded {loaded} campaigns from {path}")
    if settings.customers_db.exists():
        from eventplatform.collect.customers import CustomerStore

        known = set(CustomerStore(settings.customers_db).customers())
        for owner in sorted({c.owner for c in parsed} - known):
            click.secho(
                f"warning: owner {owner} is not a customer (eventplatform customers list): "
                "its campaigns spend nothing until it sends events",
                fg="yellow",
                err=True,
            )


@campaigns.command("status")
def status() -> None:
    """Every campaign's spend, budget, status and pacing, now."""
    from datetime import UTC, datetime, timedelta

    from eventplatform.budgets.campaigns import read_campaigns
    from eventplatform.budgets.spend import campaign_states, foreign_cost_events, read_spend

    settings = get_settings()
    clickhouse = platform_clickhouse(settings)
    now = datetime.now(UTC)
    states = campaign_states(read_campaigns(clickhouse), read_spend(clickhouse, now), now)
    click.echo(
        f"{'campaign':<24} {'owner':<16} {'status':<13} {'spend today':>12} {'daily':>9} "
        f"{'spend total':>12} {'total':>10} {'pacing':>7}"
    )
    for s in states:
        click.echo(
            f"{s.campaign_id:<24} {s.owner:<16} {s.status:<13} {s.spend_today:>12.2f} "
            f"{s.daily_budget:>9.2f} {s.spend_total:>12.2f} {s.total_budget:>10.2f} "
            f"{s.pacing_pct:>6.0f}%"
        )
    window = settings.quality.window_minutes
    for f in foreign_cost_events(clickhouse, now - timedelta(minutes=window), now):
        click.secho(
            f"not spent: {f.customer_id} sent {f.events} cost events ({f.cost:.2f}) in the "
            f"last {window} min naming campaigns it does not own ({f.owned_by_others} "
            f"another customer's, {f.not_loaded} not loaded): {', '.join(f.campaigns)}",
            fg="yellow",
        )


@campaigns.command("verify-spend")
def verify_spend() -> None:
    """Reconcile the incremental spend with a full recompute from every landed cost event
    (the cost grows with history: a check to run now and then, not on every refresh). Exit 1
    naming each campaign whose totals differ."""
    from datetime import UTC, datetime

    from eventplatform.budgets.spend import spend_drift

    clickhouse = platform_clickhouse(get_settings())
    drift = spend_drift(clickhouse, datetime.now(UTC))
    for campaign_id, rolled, full in drift:
        click.secho(
            f"{campaign_id}: incremental spend {rolled:.6f}, full recompute {full:.6f}",
            fg="red",
            err=True,
        )
    if drift:
        sys.exit(1)
    click.echo("spend: the incremental totals equal the full recompute for every campaign")


@campaigns.command("watch")
@click.option(
    "--from-beginning/--new-only",
    default=True,
    help="Replay the compacted topic first (the current state), then follow.",
)
@click.option("--max-signals", type=int, default=None, help="Exit after this many signals.")
@click.option("--timeout", type=float, default=None, help="Exit after this many seconds.")
def watch(from_beginning: bool, max_signals: int | None, timeout: float | None) -> None:
    """Print pause/resume signals as an ad server consuming campaign.control sees them."""
    settings = get_settings()
    topic = settings.kafka.control_topic
    consumer = make_consumer(
        settings.kafka.bootstrap,
        f"campaigns-watch-{uuid.uuid4().hex}",
        **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
    )

    def on_assign(c, partitions):
        if from_beginning:
            for p in partitions:
                p.offset = OFFSET_BEGINNING
        c.assign(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    seen, deadline = 0, time.monotonic() + timeout if timeout else None
    try:
        while (max_signals is None or seen < max_signals) and (
            deadline is None or time.monotonic() < deadline
        ):
            message = consumer.poll(0.5)
            if message is None or message.error() or message.value() is None:
                continue
            signal = orjson.loads(message.value())
            click.echo(
                f"{signal['signal_ts']}  {signal['campaign_id']:<24} "
                f"{signal['action'].upper():<6} {signal['status']:<13} "
                f"spend {signal['spend_total']:.2f}/{signal['total_budget']:.2f} "
                f"today {signal['spend_today']:.2f}/{signal['daily_budget']:.2f} "
                f"{signal['currency']}  ({signal['reason']})",
                nl=True,
            )
            sys.stdout.flush()
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
