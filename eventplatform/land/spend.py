"""Incremental spend: each landed batch adds what it spent, so a refresh reads a few rows.

The landing run calls :func:`record_spend` with a batch's rows right after inserting them
into ``events`` and before committing its offsets (``land/sinks.py``), so the spend is inside
the batch's exactly-once envelope:

1. the batch's cost events (``impression``, ``ad_click``, ``conversion`` with a cost > 0 and a
   campaign) are reduced to one per ``customer_id:event_id`` (the first by Kafka position);
2. ``spend_seen`` (a key-value table) is asked which of those keys were already spent; a key
   spent by *this* batch (its deduplication token) counts as not yet spent, so a replay
   rebuilds exactly what the first attempt wrote;
3. the new keys are written to ``spend_seen`` with the batch's token;
4. their cost is added to ``spend`` (a SummingMergeTree: per customer and named campaign a
   total, and per 15-minute bucket of ``event_ts``) in one insert of one part, with the
   batch's token: a replay of a batch whose insert was done is dropped whole.

A crash between 3 and 4 leaves keys marked by the batch and no spend; the replay finds its
own marks, rebuilds the same rows and inserts them. A crash after 4 replays into a dropped
insert. A second copy of an event (a sender's retry, the same id on another shard or topic, a
later batch) finds the key spent by another batch and adds nothing. So every distinct cost
event is spent exactly once: the first copy recorded wins, with its campaign, cost and time.

Steps 2-4 must not interleave with another batch's: with the embedded engine they run inside
the engine's inter-process lock (the same session as the events insert); with a server, under
a file lock beside the lake (``serialized``), so several landing processes on one machine
are serialized; landing processes on several machines need one lock for all of them.

Ownership is not applied here: spend is kept per (customer_id, campaign named), and the read
picks the owner's row (``spend.read_spend``). A campaign loaded after its events, or another
customer naming it, is handled at read time; a campaign's owner never changes (campaigns.py).

Tables landed before this existed are backfilled once (:func:`ensure_backfilled`), from the
landed events, by the first batch recorded (so under the same serialization); a marker row,
written last, says it is done, and a crashed backfill is redone from scratch. Until then a
refresh recomputes (``budgets/spend.py``).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from eventplatform.clickhouse import ClickHouse
from eventplatform.land.crashpoints import crashpoint

COST_EVENTS = ("impression", "ad_click", "conversion")
BUCKET_S = 15 * 60  # every IANA offset is a whole number of quarter hours
EPOCH = datetime(1970, 1, 1)
TOTAL, BUCKET, BACKFILLED = "total", "bucket", "backfilled"
BACKFILL_BATCH = "backfill"
BACKFILL_SLICES = 16  # the backfill deduplicates a sixteenth of the keys at a time
_COLUMNS = ["kind", "bucket", "customer_id", "campaign_id", "cost", "events"]


def spend_key(customer_id: str, event_id: str) -> str:
    """One key per sender's event. A customer id has no ':' (CUSTOMER_ID), so it is unique."""
    return f"{customer_id}:{event_id}"


def first_cost_events(table: pa.Table) -> dict[str, tuple[str, str, float, int]]:
    """The batch's cost events, one per key (the first by topic, partition, offset):
    key -> (customer_id, campaign named, cost, 15-minute bucket as epoch seconds)."""
    if table.num_rows == 0 or "event_type" not in table.column_names:
        return {}
    cost = table.column("cost")
    mask = pc.and_(
        pc.and_(
            pc.is_in(table.column("event_type"), value_set=pa.array(COST_EVENTS)),
            pc.fill_null(pc.greater(cost, 0), False),
        ),
        pc.is_valid(table.column("campaign_id")),
    )
    rows = table.filter(mask)
    if rows.num_rows == 0:
        return {}
    rows = rows.sort_by(
        [
            ("kafka_topic", "ascending"),
            ("kafka_partition", "ascending"),
            ("kafka_offset", "ascending"),
        ]
    )
    ms = pc.cast(pc.cast(rows.column("event_ts"), pa.timestamp("ms", tz="UTC")), pa.int64())
    buckets = pc.multiply(pc.divide(ms, BUCKET_S * 1000), BUCKET_S).to_pylist()
    first: dict[str, tuple[str, str, float, int]] = {}
    for customer, event_id, campaign, value, bucket in zip(
        rows.column("customer_id").to_pylist(),
        rows.column("event_id").to_pylist(),
        rows.column("campaign_id").to_pylist(),
        rows.column("cost").to_pylist(),
        buckets,
        strict=True,
    ):
        first.setdefault(spend_key(customer, event_id), (customer, campaign, value, bucket))
    return first


def record_spend(client: Client, database: str, table: pa.Table, token: str) -> int:
    """Add the batch's not yet spent cost events to ``spend`` (steps 1-4 above); returns how
    many were new. ``token`` identifies the batch (the same on a replay), as for ``events``.
    The caller serializes (embedded: inside the engine's session; else ``serialized``)."""
    ensure_backfilled(client, database)
    candidates = first_cost_events(table)
    if not candidates:
        return 0
    spent_by_others = {
        key
        for key, batch in client.query(
            f"SELECT key, batch FROM {database}.spend_seen "
            "WHERE key IN (SELECT arrayJoin({keys:Array(String)}))",
            parameters={"keys": list(candidates)},
        ).result_rows
        if batch != token
    }
    new = {k: v for k, v in candidates.items() if k not in spent_by_others}
    if not new:
        return 0
    client.insert(
        f"{database}.spend_seen", [[key, token] for key in new], column_names=["key", "batch"]
    )
    crashpoint("after_spend_seen")
    sums: dict[tuple[str, int, str, str], list] = {}  # (kind, bucket, customer, campaign)
    for customer, campaign, value, bucket in new.values():
        for key in ((TOTAL, 0, customer, campaign), (BUCKET, bucket, customer, campaign)):
            acc = sums.setdefault(key, [0.0, 0])
            acc[0] += value
            acc[1] += 1
    rows = [
        [kind, datetime.fromtimestamp(b, UTC).replace(tzinfo=None), c, k, cost, n]
        for (kind, b, c, k), (cost, n) in sorted(sums.items())
    ]
    client.insert(
        f"{database}.spend",
        rows,
        column_names=_COLUMNS,
        settings={"insert_deduplication_token": f"spend:{token}"},
    )
    crashpoint("after_spend")
    return len(new)


def is_backfilled(client: Client, database: str) -> bool:
    """Whether the one-time backfill is done (its marker row is there)."""
    query = f"SELECT count() FROM {database}.spend WHERE kind = 'backfilled'"
    return bool(client.query(query).result_rows[0][0])


def ensure_backfilled(client: Client, database: str) -> bool:
    """Spend of the events landed before incremental spend, once; True if it ran now.

    Under the same serialization as ``record_spend``: no batch records while it runs. The
    marker is the last insert, so a crash anywhere before it redoes the whole backfill."""
    if is_backfilled(client, database):
        return False
    for table in ("spend_seen", "spend", "spend_backfill"):
        client.command(f"TRUNCATE TABLE {database}.{table}")
    once = "SETTINGS insert_deduplicate = 0"
    staged = f"{database}.spend_backfill"
    for piece in range(BACKFILL_SLICES):  # every copy of a key is in the same slice
        where = f"AND cityHash64(customer_id, event_id) % {BACKFILL_SLICES} = {piece}"
        client.command(f"INSERT INTO {staged} {once} {first_landed_cost_events(database, where)}")
    client.command(
        f"INSERT INTO {database}.spend_seen (key, batch) {once} "
        f"SELECT concat(customer_id, ':', event_id), '{BACKFILL_BATCH}' FROM {staged}"
    )
    columns = ", ".join(_COLUMNS)
    client.command(
        f"INSERT INTO {database}.spend ({columns}) {once} "
        f"SELECT 'total', toDateTime(0, 'UTC'), customer_id, named_campaign, sum(event_cost), "
        f"count() FROM {staged} GROUP BY customer_id, named_campaign"
    )
    client.command(
        f"INSERT INTO {database}.spend ({columns}) {once} "
        f"SELECT 'bucket', toStartOfFifteenMinutes(event_time), customer_id, named_campaign, "
        f"sum(event_cost), count() FROM {staged} "
        "GROUP BY toStartOfFifteenMinutes(event_time), customer_id, named_campaign"
    )
    no_dedup = {"insert_deduplicate": 0}
    client.insert(
        f"{database}.spend",
        [[BACKFILLED, EPOCH, "", "", 0.0, 1]],
        column_names=_COLUMNS,
        settings=no_dedup,
    )
    client.command(f"TRUNCATE TABLE {staged}")
    return True


def first_landed_cost_events(database: str, where: str = "") -> str:
    """One row per (customer_id, event_id) among the landed cost events: the first landed
    copy (by landed_ts, then Kafka topic, partition, offset; copies landed together are one
    batch replayed, or one batch's own repeats, ordered as ``first_cost_events`` orders
    them). The full recompute of spend, and the backfill."""
    first = "(landed_ts, kafka_topic, kafka_partition, kafka_offset)"
    return (
        "SELECT customer_id, event_id, "
        f"assumeNotNull(argMin(campaign_id, {first})) AS named_campaign, "
        f"argMin(cost, {first}) AS event_cost, argMin(event_ts, {first}) AS event_time "
        f"FROM {database}.events WHERE event_type IN {COST_EVENTS} AND cost > 0 "
        f"AND campaign_id IS NOT NULL {where} GROUP BY customer_id, event_id"
    )


@contextmanager
def serialized(clickhouse: ClickHouse, lock_path: Path | None) -> Iterator[None]:
    """One batch's spend at a time. The embedded engine's session is already exclusive
    across processes; with a server, a file lock (one machine's landing processes)."""
    if clickhouse.embedded or lock_path is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
