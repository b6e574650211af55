"""`eventplatform marts ...` (list, build a date range) and `eventplatform sql "SELECT ..."`."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click

from eventplatform.marts.backfill import BackfillRun, RecordedBackfill
from eventplatform.settings import Settings, get_settings


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    if value in ("today", "yesterday"):
        today = datetime.now(UTC).date()
        return today if value == "today" else today - timedelta(days=1)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD, today, yesterday)") from exc


def marts_group(recorded_backfill: RecordedBackfill | None = None) -> click.Group:
    """The ``marts`` command group. ``recorded_backfill`` builds a range as one run recorded
    by the orchestrator; without one, ``build`` needs ``--no-dagster``."""

    @click.group()
    def marts() -> None:
        """The analytic marts (DuckDB warehouse, Parquet, ClickHouse mirror)."""

    marts.add_command(list_marts)
    marts.add_command(_build_command(recorded_backfill))
    return marts


@click.command("list")
@click.option("--columns", is_flag=True, help="Show each mart's columns too.")
def list_marts(columns: bool) -> None:
    """The marts, their grain and (with --columns) their columns."""
    from eventplatform.marts.catalog import load_marts

    for mart in load_marts(get_settings().paths.sql_dir / "marts"):
        click.secho(mart.name, bold=True)
        click.echo(f"  {mart.description}")
        click.echo(f"  grain: {', '.join(mart.grain)}; owners: {', '.join(mart.owners)}")
        if columns:
            for name, description in mart.columns.items():
                click.echo(f"    {name}: {description}")


def _build_command(recorded_backfill: RecordedBackfill | None) -> click.Command:
    @click.command("build")
    @click.option(
        "--start", "start", required=True, help="First day (YYYY-MM-DD, today, yesterday)."
    )
    @click.option("--end", "end", help="Last day, included (default: --start).")
    @click.option("--mart", "names", multiple=True, help="Only this mart (repeatable).")
    @click.option(
        "--no-dagster",
        is_flag=True,
        help="Build directly, without recording a run in the Dagster instance.",
    )
    def build(start: str, end: str | None, names: tuple[str, ...], no_dagster: bool) -> None:
        """Build (or rebuild) the marts for each day from --start to --end, as one Dagster run.

        The run and the partitions' materializations show in the UI like a backfill's.
        """
        first, last = _day(start), _day(end or start)
        if last < first:
            raise click.BadParameter("--end is before --start")
        settings = get_settings()
        if first < date.fromisoformat(settings.marts.start_date):
            raise click.BadParameter(
                f"{first} is before the first partition {settings.marts.start_date} "
                "(EP_MARTS_START_DATE)"
            )
        if no_dagster:
            sys.exit(_build_directly(settings, first, last, list(names) or None))
        if recorded_backfill is None:
            raise click.UsageError("no orchestrator to record the run here: use --no-dagster")
        sys.exit(_report(recorded_backfill(first, last, list(names) or None), first, last))

    return build


def _build_directly(settings: Settings, first: date, last: date, names: list[str] | None) -> int:
    """Build without recording a run; the exit status: 1 when a day does not reconcile."""
    from eventplatform.clickhouse import platform_clickhouse
    from eventplatform.marts.build import MartBuilder

    clickhouse = platform_clickhouse(settings) if settings.marts.mirror_clickhouse else None
    failed = False
    for part in MartBuilder(settings, clickhouse=clickhouse).build_range(first, last, names):
        failed |= not part.reconciled
        status = "reconciled" if part.reconciled else "RECONCILIATION FAILED"
        click.echo(f"{part.day} {part.mart}: {part.rows} rows, {status}")
        for r in part.reconciliations:
            if not r.passed:
                click.echo(f"    {r}")
    return 1 if failed else 0


def _report(run: BackfillRun, first: date, last: date) -> int:
    """Print a recorded run's partitions and failed checks; the exit status."""
    for part in run.built:
        click.echo(f"{part.day} {part.mart}: {part.rows} rows")
    for check in run.failed_checks:
        click.echo(f"check {check.check} FAILED for {check.mart}: {check.description}")
    failed = bool(run.failed_checks)
    click.echo(
        f"built {first}..{last} in run {run.run_id}: "
        + ("reconciliation failed" if failed else "all reconciled")
    )
    return 1 if failed or not run.success else 0


@click.command("sql")
@click.argument("query")
@click.option("--clickhouse", is_flag=True, help="Run on ClickHouse instead of the warehouse.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (required for parquet).",
)
@click.option("--max-rows", default=100, show_default=True, help="Rows shown as a table.")
def sql_command(query: str, clickhouse: bool, fmt: str, output: Path | None, max_rows: int) -> None:
    """Run QUERY on the DuckDB warehouse (read-only) or, with --clickhouse, on ClickHouse."""
    from eventplatform.marts.query import (
        format_table,
        query_clickhouse,
        query_warehouse,
        to_csv,
    )

    settings = get_settings()
    try:
        if clickhouse:
            from eventplatform.clickhouse import platform_clickhouse

            table = query_clickhouse(platform_clickhouse(settings), query)
        else:
            table = query_warehouse(settings.warehouse_path, query)
    except Exception as exc:  # an analyst's typo: say what the engine said, no traceback
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        click.echo(f"{table.num_rows} rows written to {output}")
        return
    text = to_csv(table) if fmt == "csv" else format_table(table, max_rows) + "\n"
    if output is not None:
        output.write_text(text)
        click.echo(f"{table.num_rows} rows written to {output}")
    else:
        click.echo(text, nl=False)
