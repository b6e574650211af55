"""`eventplatform enrichment`: per-customer settings (IP mode, own domains) and the rates.

The operator's commands. ``show`` prints one customer's settings, never the salt.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from eventplatform.enrich.currency import RatesError, RatesStore
from eventplatform.enrich.customer_settings import SettingsError, SettingsStore
from eventplatform.enrich.ipanon import MODES
from eventplatform.settings import get_settings


def _store() -> SettingsStore:
    settings = get_settings()
    return SettingsStore(settings.customers_db, settings.enrich.change_delay_s)


def _when(ms: int) -> str:
    if not ms:
        return "always (the defaults)"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("enrichment")
def enrichment() -> None:
    """Per-customer enrichment settings and the exchange rates (docs/enrichment.md)."""


@enrichment.command("set")
@click.argument("customer")
@click.option("--ip-mode", type=click.Choice(MODES), help="keep, truncate (default) or hash.")
@click.option("--domains", help="The customer's own domains, comma-separated ('' clears).")
@click.option("--rotate-salt", is_flag=True, help="A new secret salt for the hash mode.")
def set_command(customer: str, ip_mode: str | None, domains: str | None, rotate_salt: bool):
    """Change a customer's settings; they apply to events received after the delay."""
    try:
        row = _store().set(
            customer,
            ip_mode=ip_mode,
            internal_domains=None if domains is None else domains.split(","),
            rotate_salt=rotate_salt,
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(row.public()))
    click.echo(f"applies to events received from {_when(row.effective_ms)}")


@enrichment.command("show")
@click.argument("customer")
def show_command(customer: str) -> None:
    """One customer's newest settings (the salt is never shown)."""
    row = _store().current(customer)
    click.echo(json.dumps(row.public()))
    click.echo(f"in effect for events received from {_when(row.effective_ms)}")


@enrichment.group("rates")
def rates() -> None:
    """The dated exchange rates into the reporting currency."""


@rates.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def rates_load(path: Path) -> None:
    """Load a CSV of date,currency,rate (1 unit = rate units of the reporting currency)."""
    settings = get_settings()
    store = RatesStore(
        settings.rates_dir, settings.enrich.reporting_currency, settings.enrich.change_delay_s
    )
    try:
        stored = store.load(path.read_text())
    except (RatesError, UnicodeDecodeError) as exc:
        click.echo(f"{path}: {exc}; nothing loaded", err=True)
        sys.exit(1)
    effective = int(stored.name.removeprefix("rates-").removesuffix(".csv"))
    click.echo(f"loaded {stored.name}: applies to events received from {_when(effective)}")


@rates.command("list")
def rates_list() -> None:
    """The loaded tables, oldest first."""
    settings = get_settings()
    store = RatesStore(
        settings.rates_dir, settings.enrich.reporting_currency, settings.enrich.change_delay_s
    )
    for table in store.tables():
        currencies = ", ".join(sorted(table.by_currency))
        click.echo(f"{table.name}: from {_when(table.effective_ms)}: {currencies}")
