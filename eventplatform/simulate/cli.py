"""`eventplatform simulate` and `eventplatform demo-setup`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from eventplatform.settings import Settings, get_settings
from eventplatform.simulate.run import HttpSink, KafkaSink, simulate
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec


def demo_keys_file(settings: Settings) -> Path:
    return settings.data_dir / "demo_keys.json"


def demo_setup(settings: Settings, spec: TrafficSpec) -> dict[str, str]:
    """Customers (with keys kept in the data folder) and campaigns for the simulated traffic.

    Idempotent: existing customers keep their keys.
    """
    from eventplatform.budgets.campaigns import load_campaigns, parse_campaigns
    from eventplatform.clickhouse import platform_clickhouse
    from eventplatform.collect.customers import CustomerStore
    from eventplatform.simulate.traffic import campaigns_csv

    path = demo_keys_file(settings)
    keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    store = CustomerStore(settings.customers_db)
    known = set(store.customers())
    generator = TrafficGenerator(spec)
    for customer in generator.customers:
        if customer.customer_id not in keys:
            if customer.customer_id in known:
                keys[customer.customer_id] = store.new_key(customer.customer_id)
            else:
                keys[customer.customer_id] = store.add(customer.customer_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys, indent=1))
    os.chmod(path, 0o600)
    load_campaigns(
        platform_clickhouse(settings), parse_campaigns(campaigns_csv(generator.campaigns))
    )
    return keys


def _spec(
    seed: int, customers: int, bad_rate: float, anomalies: bool, day_seconds: float
) -> TrafficSpec:
    return TrafficSpec(
        seed=seed,
        customers=customers,
        bad_rate=bad_rate,
        anomalies=anomalies,
        day_seconds=day_seconds,
        low_budgets=True,
    )


@click.command("demo-setup")
@click.option("--seed", default=7, show_default=True)
@click.option("--customers", default=8, show_default=True)
def demo_setup_command(seed: int, customers: int) -> None:
    """Create the simulator's customers (keys in the data folder) and load its campaigns."""
    settings = get_settings()
    keys = demo_setup(settings, _spec(seed, customers, 0, False, 86400))
    click.echo(f"{len(keys)} demo customers, keys in {demo_keys_file(settings)}")


@click.command("simulate")
@click.option("--rate", default=200.0, show_default=True, help="Average events per second.")
@click.option("--duration", default=60.0, show_default=True, help="Seconds to run.")
@click.option("--customers", default=8, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--target", type=click.Choice(["http", "kafka"]), default="http", show_default=True)
@click.option("--url", default=None, help="Collector URL (default from EP_COLLECTOR_*).")
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON {customer: api key}; default: the demo keys (made if missing).",
)
@click.option("--bad-rate", default=0.0, show_default=True, help="Share of invalid events.")
@click.option("--anomalies/--no-anomalies", default=False, show_default=True)
@click.option(
    "--day-seconds",
    default=86400.0,
    show_default=True,
    help="Length of a simulated day (compress it to see the diurnal curve).",
)
@click.option(
    "--summary",
    "summary_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write what was sent, per customer, type and label, as JSON.",
)
def simulate_command(
    rate: float,
    duration: float,
    customers: int,
    seed: int,
    target: str,
    url: str | None,
    keys_file: Path | None,
    bad_rate: float,
    anomalies: bool,
    day_seconds: float,
    summary_file: Path | None,
) -> None:
    """Send realistic traffic through the collector (default) or straight to Kafka."""
    settings = get_settings()
    spec = _spec(seed, customers, bad_rate, anomalies, day_seconds)
    generator = TrafficGenerator(spec)
    if target == "kafka":
        sink = KafkaSink(settings.kafka.bootstrap, settings.kafka.raw_topic)
    else:
        if keys_file:
            keys = json.loads(keys_file.read_text())
        elif demo_keys_file(settings).exists():
            keys = json.loads(demo_keys_file(settings).read_text())
        else:
            keys = demo_setup(settings, spec)
        c = settings.collector
        sink = HttpSink(url or f"http://{c.host}:{c.port}", keys)
    last = {"t": -5.0}

    def progress(elapsed: float, sent: int) -> None:
        if elapsed - last["t"] >= 5:
            last["t"] = elapsed
            click.echo(
                f"[{elapsed:5.0f}s] sent {sent} events "
                f"(x{generator.rate_multiplier(elapsed):.1f} of the average rate now)"
            )

    summary = simulate(generator, sink, rate, duration, progress=progress)
    click.echo(
        f"sent {summary.total()} events ({summary.total(good=True)} valid, "
        f"{summary.total(good=False)} invalid on purpose) to {target}"
    )
    click.echo(
        f"{'customer':<12} {'valid':>8} {'invalid':>8}"
        + (f" {'accepted':>9} {'overflow':>9} {'rejected':>9}" if target == "http" else "")
    )
    for customer, counts in sorted(summary.by_customer().items()):
        line = f"{customer:<12} {counts['good']:>8} {counts['bad']:>8}"
        if isinstance(sink, HttpSink):
            taken = sink.taken.get(customer, {})
            line += (
                f" {taken.get('accepted', 0):>9} {taken.get('overflowed', 0):>9} "
                f"{taken.get('rejected', 0):>9}"
            )
        click.echo(line)
    if summary_file:
        summary_file.write_text(
            json.dumps(
                {
                    "by_customer": summary.by_customer(),
                    "by_customer_type_label": [
                        {"customer": c, "event_type": t, "label": lab, "count": n}
                        for (c, t, lab), n in sorted(summary.counts.items())
                    ],
                    "collector": sink.taken if isinstance(sink, HttpSink) else None,
                },
                indent=1,
            )
        )
    if isinstance(sink, HttpSink):
        rejected = sum(t["rejected"] for t in sink.taken.values())
        if rejected != summary.total(good=False):
            click.secho(
                f"error: the collector rejected {rejected} events, "
                f"{summary.total(good=False)} were invalid",
                fg="red",
                err=True,
            )
            sys.exit(1)
