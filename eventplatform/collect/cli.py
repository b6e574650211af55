"""`eventplatform customers ...`, `eventplatform collect`, `eventplatform ingest FILE`."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from eventplatform.collect.customers import CustomerError, CustomerStore
from eventplatform.settings import get_settings


def _store() -> CustomerStore:
    return CustomerStore(get_settings().customers_db)


@click.group()
def customers() -> None:
    """Customers and their API keys."""


@customers.command("add")
@click.argument("customer_id")
def customers_add(customer_id: str) -> None:
    """Create a customer and print its API key (shown once: store it now)."""
    try:
        key = _store().add(customer_id)
    except CustomerError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(key)


@customers.command("new-key")
@click.argument("customer_id")
def customers_new_key(customer_id: str) -> None:
    """Another key for a customer (to rotate: make a new one, then revoke the old)."""
    try:
        click.echo(_store().new_key(customer_id))
    except CustomerError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)


@customers.command("list")
def customers_list() -> None:
    """Customers and their keys (ids only; secrets are never stored)."""
    store = _store()
    keys = store.keys()
    for customer in store.customers():
        click.echo(customer)
        for key in (k for k in keys if k.customer_id == customer):
            made = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M")
            state = (
                "active"
                if key.active
                else "revoked "
                + datetime.fromtimestamp(key.revoked_at, UTC).strftime("%Y-%m-%d %H:%M")
            )
            click.echo(f"  key {key.key_id}  created {made}  {state}")


@customers.command("revoke")
@click.argument("key_id")
def customers_revoke(key_id: str) -> None:
    """Revoke a key by its id (the 12 hex digits after ep_)."""
    try:
        _store().revoke(key_id)
    except CustomerError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")


@click.command("collect")
@click.option("--host", default=None, help="Default: EP_COLLECTOR_HOST.")
@click.option("--port", type=int, default=None, help="Default: EP_COLLECTOR_PORT.")
@click.option("--workers", type=int, default=None, help="Default: EP_COLLECTOR_WORKERS.")
@click.option(
    "--admin-port",
    type=int,
    default=None,
    help="/metrics, /readyz, /openapi.json. Default: EP_COLLECTOR_ADMIN_PORT (on "
    "EP_COLLECTOR_ADMIN_HOST, loopback).",
)
def collect(
    host: str | None, port: int | None, workers: int | None, admin_port: int | None
) -> None:
    """Run the HTTP collector until SIGTERM/Ctrl-C (then it flushes every accepted event)."""
    import os

    import uvicorn

    if admin_port is not None:  # the app (in each worker) reads it from the settings
        os.environ["EP_COLLECTOR_ADMIN_PORT"] = str(admin_port)
    c = get_settings().collector
    uvicorn.run(
        "eventplatform.collect.app:create_app",
        factory=True,
        host=host or c.host,
        port=port or c.port,
        workers=workers or c.workers,
        log_level="info",
        access_log=c.access_log,
        timeout_graceful_shutdown=30,
        # httptools, as uvicorn picks it, with a response written in one system call
        http="eventplatform.collect.protocol:JoinedWritesProtocol",
    )


@click.command("ingest")
@click.argument("ndjson_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--customer", required=True, help="The customer the events belong to.")
@click.option("--batch", type=int, default=5000, show_default=True)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for the broker after the file's end; then what it has not taken "
    "is journaled (delivered by the next collector or replay).",
)
def ingest(ndjson_file: Path, customer: str, batch: int, wait_s: float) -> None:
    """Replay an NDJSON file through the same validation as HTTP; waits for delivery (what
    the broker has not taken --wait seconds after the end, or at Ctrl-C, is journaled)."""
    from eventplatform.collect.intake import Intake, parse_body, producer_limits
    from eventplatform.collect.journal import DeliveryJournal, producer_settings
    from eventplatform.collect.metrics import Metrics
    from eventplatform.collect.quotas import Quotas
    from eventplatform.kafka.clients import make_producer

    settings = get_settings()
    k = settings.kafka
    if customer not in _store().customers():
        click.secho(
            f"error: no customer {customer} (eventplatform customers add)", fg="red", err=True
        )
        sys.exit(1)
    max_messages, max_bytes = 100_000, 256 * 2**20
    # The collector's producer set-up: no delivery timeout, and its journal (which this
    # replays first, and leaves what the broker did not take in, for whichever starts next).
    producer = make_producer(
        k.bootstrap,
        **producer_limits(max_messages, max_bytes),
        **producer_settings(settings.collector.delivery_timeout_s),
    )
    infinite = float("inf")
    metrics = Metrics()
    intake = Intake(
        producer,
        k.raw_topic,
        k.overflow_topic,
        k.dlq_topic,
        Quotas(infinite, infinite, infinite, infinite),
        metrics,
        max_messages,
        source="replay",
        max_buffered_bytes=max_bytes,
        policy=settings.event_policy,
        max_event_bytes=settings.collector.max_event_bytes,
        dlq_max_value_bytes=settings.collector.dlq_max_value_bytes,
    )
    journal = DeliveryJournal(settings.collector_journal_dir, producer, metrics)
    intake.keep = journal.keep
    journal.replay_in_background()
    totals = {"accepted": 0, "rejected": 0}
    started = time.monotonic()
    size = ndjson_file.stat().st_size
    taken_lines = 0  # lines of the file accepted: delivered or, at the end, journaled
    interrupted = False
    try:
        with (
            open(ndjson_file, "rb") as f,
            click.progressbar(length=size, label="replaying", file=sys.stderr) as progress,
        ):
            lines: list[bytes] = []
            read_lines = 0
            for line in [*f, None]:
                if line is not None:
                    read_lines += 1
                    if line.strip():
                        lines.append(line)
                if lines and (line is None or len(lines) >= batch):
                    pairs = parse_body(
                        b"\n".join(lines),
                        "application/x-ndjson",
                        len(lines),
                        settings.collector.max_event_bytes,
                    )
                    # A broker that is down slows the replay down to a stop; it waits.
                    result = intake.accept(customer, pairs, len(pairs), wait_for_room_s=infinite)
                    taken_lines = read_lines
                    totals["accepted"] += result.accepted
                    totals["rejected"] += len(result.rejected)
                    for r in result.rejected[:20]:
                        click.echo(f"rejected: {'; '.join(r.errors)}", err=True)
                    progress.update(sum(len(x) for x in lines))
                    lines = []
                    journal.maintain()
    except KeyboardInterrupt:
        interrupted = True
    lost = journal.close(0 if interrupted else wait_s)
    journaled = int(metrics.get("collector_journal_written_total"))
    failed = int(
        sum(v for (n, _), v in metrics.counters.items() if n == "collector_delivery_failures_total")
    )
    if interrupted or lost or journaled or failed:
        click.secho(
            f"error: lines 1-{taken_lines} of {ndjson_file} were taken ({totals['accepted']} "
            f"accepted): {journaled} of their messages are not delivered yet and wait in "
            f"{settings.collector_journal_dir} (the next collector or replay delivers them), "
            f"{failed} were refused by the broker for good (in its failed/), {lost} could not "
            "be journaled" + (f"; resume from line {taken_lines + 1}" if interrupted else ""),
            fg="red",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"ingested {ndjson_file}: {totals['accepted']} accepted, {totals['rejected']} "
        f"rejected (in {k.dlq_topic}), {time.monotonic() - started:.1f}s"
    )
