"""`eventplatform land`: one shard's landing run from the shell (Dagster runs the same code)."""

from __future__ import annotations

import click

from eventplatform.land.compact import compact_platform_lake
from eventplatform.land.report import BatchReport
from eventplatform.land.sources import build_lander
from eventplatform.settings import get_settings


@click.command("land")
@click.option(
    "--source",
    type=click.Choice(["raw", "overflow", "dlq"]),
    default="raw",
    show_default=True,
    help="Which topic: events.raw, events.overflow or events.dlq (names from settings).",
)
@click.option("--shard", type=int, default=0, show_default=True)
@click.option("--idle-stop", type=float, help="Stop after this many idle seconds.")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def land_command(source: str, shard: int, idle_stop: float | None, quiet: bool) -> None:
    """Land one shard until it is idle (EP_LAND_IDLE_STOP_S) or out of time."""
    settings = get_settings()
    if idle_stop is not None:
        settings.land.idle_stop_s = idle_stop
    lander = build_lander(settings, source, shard)

    def on_batch(report: BatchReport) -> None:
        if not quiet:
            latency = (
                f" latency p50 {report.latency_p50_ms:.0f} ms p99 {report.latency_p99_ms:.0f} ms"
                if report.latency_p99_ms is not None
                else ""
            )
            click.echo(
                f"{'replayed ' if report.replayed else ''}batch {report.messages} messages: "
                f"{report.rows} rows, {report.dead_letters} dead letters, "
                f"{len(report.files)} files, lag {report.lag}{latency} "
                f"({report.closed_because})"
            )

    stages: dict[str, float] = {}

    def on_batch_with_stages(report: BatchReport) -> None:
        for stage, seconds in report.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        on_batch(report)

    summary = lander.run(on_batch=on_batch_with_stages, log=click.echo)
    if stages:
        click.echo(
            "time per stage: " + ", ".join(f"{name} {secs:.2f}s" for name, secs in stages.items())
        )
    click.echo(
        f"landed {summary.rows} rows and {summary.dead_letters} dead letters in "
        f"{summary.batches} batches ({summary.replayed_batches} replayed), busy "
        f"{summary.busy_s:.1f}s; stopped: {summary.stopped_because}"
    )


@click.command("compact")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def compact_command(quiet: bool) -> None:
    """One compaction pass over the lake: closed hours' small files into few (the
    lake_compaction sensor runs the same; see docs/landing.md)."""
    report = compact_platform_lake(get_settings(), log=(lambda line: None) if quiet else click.echo)
    click.echo(
        f"compacted {report.inputs} files into {report.outputs} in {report.folders} folders "
        f"({report.input_bytes:,} -> {report.output_bytes:,} bytes); deleted {report.deleted} "
        f"superseded files; {report.deferred_folders} folders left for the next pass"
    )
