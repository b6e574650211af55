"""The `eventplatform` command: one entry point for operators. Each group lives with its domain."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import signal
import sys
from datetime import date
from typing import TYPE_CHECKING

import click

from eventplatform.kafka.broker import BrokerError, install_jars, local_broker
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import get_settings

if TYPE_CHECKING:
    from eventplatform.marts.backfill import BackfillRun


@click.group()
def main() -> None:
    """eventplatform: HTTP intake -> Kafka -> Parquet lake + ClickHouse, on Dagster."""
    # `kill -USR1 <pid>` prints where every thread of a running command is (to its stderr):
    # for a process that seems stuck, e.g. one that holds the embedded engine.
    with contextlib.suppress(io.UnsupportedOperation, ValueError):  # stderr is no file
        faulthandler.register(signal.SIGUSR1, all_threads=True)


@main.command("settings")
def show_settings() -> None:
    """Print the effective settings (after environment overrides) as JSON."""
    click.echo(json.dumps(get_settings().describe(), indent=2, default=str))


@main.group()
def kafka() -> None:
    """The local Kafka broker (KRaft, from Maven Central's jars)."""


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@kafka.command("install")
def kafka_install() -> None:
    """Resolve the broker's jars from Maven Central into the cache (idempotent)."""
    settings = get_settings()
    if settings.kafka.kafka_home:
        click.echo(f"using KAFKA_HOME={settings.kafka.kafka_home}; nothing to install")
        return
    try:
        libs = install_jars(settings.kafka_libs_dir)
    except BrokerError as exc:
        _fail(str(exc))
    click.echo(f"Kafka {settings.kafka.version} jars in {libs}")


@kafka.command("start")
def kafka_start() -> None:
    """Start the local broker (no-op when KAFKA_BOOTSTRAP_SERVERS names another cluster)."""
    settings = get_settings()
    if settings.kafka.is_external:
        click.echo(f"using external Kafka at {settings.kafka.bootstrap}; starting no broker")
        return
    try:
        status = local_broker(settings).start()
    except BrokerError as exc:
        _fail(str(exc))
    click.echo(f"kafka: {status.detail}")


@kafka.command("stop")
def kafka_stop() -> None:
    """Stop the local broker cleanly."""
    settings = get_settings()
    if settings.kafka.is_external:
        click.echo(f"using external Kafka at {settings.kafka.bootstrap}; nothing to stop")
        return
    stopped = local_broker(settings).stop()
    click.echo("kafka: stopped" if stopped else "kafka: was not running")


@kafka.command("status")
def kafka_status() -> None:
    """Say whether the broker runs and answers. Exit 1 when it does not."""
    settings = get_settings()
    if settings.kafka.is_external:
        from eventplatform.kafka.broker import broker_answers

        answering = broker_answers(settings.kafka.bootstrap, timeout_s=5)
        click.echo(
            f"kafka: external {settings.kafka.bootstrap}, "
            f"{'answering' if answering else 'NOT answering'}"
        )
        sys.exit(0 if answering else 1)
    status = local_broker(settings).status()
    click.echo(f"kafka: {status.detail}")
    sys.exit(0 if status.answering else 1)


@main.group()
def topics() -> None:
    """The platform's topics, as code."""


@topics.command("ensure")
@click.option("--alter", is_flag=True, help="Set drifted topic configuration back to spec.")
def topics_ensure(alter: bool) -> None:
    """Create missing topics, check existing ones; exit 1 when any differs from its spec."""
    settings = get_settings()
    reports = ensure_topics(
        make_admin(settings.kafka.bootstrap), platform_topics(settings.kafka), alter=alter
    )
    for report in reports:
        click.echo(str(report))
    if any(r.status == "differs" for r in reports):
        _fail(
            "some topics differ from their specification (see above); "
            "`eventplatform topics ensure --alter` sets configuration back"
        )


@main.command("run")
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Demo customers, campaigns and simulated traffic.",
)
@click.option("--demo-rate", default=100.0, show_default=True, help="Simulated events/s.")
def run(demo: bool, demo_rate: float) -> None:
    """Start the platform (broker, topics, collector, Dagster, demo traffic) until Ctrl-C."""
    from eventplatform.postgres import PostgresError
    from eventplatform.runner import run_platform

    try:
        code = run_platform(get_settings(), demo=demo, demo_rate=demo_rate)
    except (BrokerError, PostgresError) as exc:
        _fail(str(exc))
    sys.exit(code)


@main.group()
def postgres() -> None:
    """Dagster's local PostgreSQL (used with EP_DAGSTER_STORAGE=postgres)."""


def _local_postgres():
    """The local server, or None (said on screen) when EP_DAGSTER_POSTGRES_URL names one."""
    from eventplatform.postgres import local_postgres

    settings = get_settings()
    if settings.dagster.postgres_is_external:
        click.echo("using the PostgreSQL server in EP_DAGSTER_POSTGRES_URL; managing none here")
        return None
    return local_postgres(settings)


@postgres.command("start")
def postgres_start() -> None:
    """Initialise (once) and start the local server, and create Dagster's database."""
    from eventplatform.postgres import PostgresError

    server = _local_postgres()
    if server is None:
        return
    try:
        status = server.start()
    except PostgresError as exc:
        _fail(str(exc))
    click.echo(f"postgres: {status.detail}; {status.url}")


@postgres.command("stop")
def postgres_stop() -> None:
    """Stop the local server cleanly."""
    server = _local_postgres()
    if server is not None:
        click.echo("postgres: stopped" if server.stop() else "postgres: was not running")


@postgres.command("status")
def postgres_status() -> None:
    """Say whether the local server runs and answers. Exit 1 when it does not."""
    server = _local_postgres()
    if server is None:
        return
    status = server.status()
    click.echo(f"postgres: {status.detail}")
    sys.exit(0 if status.answering else 1)


@main.command("status")
def status() -> None:
    """One screen: broker, topics, landing lag per shard, runs, last landed, failing checks."""
    from eventplatform.status import status_screen

    click.echo(status_screen(get_settings()), nl=False)


@main.command("reconcile")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="How far back: a duration (30m, 6h, 2d) or an ISO-8601 time with a zone.",
)
def reconcile_command(since: str) -> None:
    """Messages in Kafka vs landed vs dead-lettered vs pending, per customer and hour.

    Exit 1 when something is missing or landed twice."""
    from eventplatform.reconcile import format_table, parse_since, reconcile_platform

    try:
        start = parse_since(since)
    except ValueError as exc:
        _fail(str(exc))
    result = reconcile_platform(get_settings(), start)
    click.echo(format_table(result))
    problems = result.problems()
    for problem in problems:
        click.secho(problem, fg="red")
    if problems:
        sys.exit(1)
    click.echo("every message is landed, dead-lettered or pending")


def _recorded_marts_backfill(first: date, last: date, names: list[str] | None) -> BackfillRun:
    """`marts build` records its run in the Dagster instance; the marts package does not know
    Dagster, so the orchestration layer is handed to it here (imported only when used)."""
    from eventplatform.defs.marts.backfill import recorded_backfill

    return recorded_backfill(first, last, names)


def _register_domain_commands() -> None:
    """Each domain keeps its commands beside its code."""
    from eventplatform.budgets.cli import campaigns
    from eventplatform.collect.cli import collect, customers, ingest
    from eventplatform.enrich.cli import enrichment
    from eventplatform.land.cli import compact_command, land_command
    from eventplatform.marts.cli import marts_group, sql_command
    from eventplatform.simulate.cli import demo_setup_command, simulate_command

    for command in (
        campaigns,
        customers,
        collect,
        ingest,
        land_command,
        compact_command,
        simulate_command,
        demo_setup_command,
        enrichment,
    ):
        main.add_command(command)
    main.add_command(ingest, name="replay")  # the same command by the name operators use
    main.add_command(marts_group(recorded_backfill=_recorded_marts_backfill))
    main.add_command(sql_command)


_register_domain_commands()


if __name__ == "__main__":
    main()
