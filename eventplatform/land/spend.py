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
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
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


def cost_candidates(table: pa.Table) -> pa.Table:
    """The batch's cost events, one per key (the first by topic, partition, offset), as the
    columns ``key``, ``customer_id``, ``campaign_id`` (named), ``cost`` and ``bucket`` (its
    15-minute bucket of ``event_ts``, UTC). In Arrow: a 100,000-event batch has some 20,000."""
    if table.num_rows == 0 or "event_type" not in table.column_names:
        return _CANDIDATES.empty_table()
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
        return _CANDIDATES.empty_table()
    rows = rows.sort_by(
        [
            ("kafka_topic", "ascending"),
            ("kafka_partition", "ascending"),
            ("kafka_offset", "ascending"),
        ]
    )
    customer = pc.cast(rows.column("customer_id"), pa.string())
    ms = pc.cast(pc.cast(rows.column("event_ts"), pa.timestamp("ms", tz="UTC")), pa.int64())
    seconds = pc.multiply(pc.divide(ms, BUCKET_S * 1000), BUCKET_S)
    candidates = pa.table(
        {
            # one key per sender's event, customer_id:event_id (a customer id has no ':',
            # CUSTOMER_ID, so it is unique; the backfill's keys are built the same way)
            "key": pc.binary_join_element_wise(
                customer, pc.cast(rows.column("event_id"), pa.string()), ":"
            ),
            "customer_id": customer,
            "campaign_id": pc.cast(rows.column("campaign_id"), pa.string()),
            "cost": pc.cast(rows.column("cost"), pa.float64()),
            "bucket": pc.cast(seconds, pa.timestamp("s", tz="UTC")),
        }
    )
    # the first row of each key (rows are in Kafka order): the least index among its rows
    indexed = candidates.append_column("row", pa.array(np.arange(candidates.num_rows)))
    first = indexed.group_by("key", use_threads=False).aggregate([("row", "min")])
    return candidates.take(np.sort(first.column("row_min").to_numpy()))


_CANDIDATES = pa.schema(
    [
        ("key", pa.string()),
        ("customer_id", pa.string()),
        ("campaign_id", pa.string()),
        ("cost", pa.float64()),
        ("bucket", pa.timestamp("s", tz="UTC")),
    ]
)


def first_cost_events(table: pa.Table) -> dict[str, tuple[str, str, float, int]]:
    """:func:`cost_candidates` as a dict: key -> (customer_id, campaign named, cost, bucket as
    epoch seconds)."""
    candidates = cost_candidates(table)
    buckets = pc.cast(candidates.column("bucket"), pa.int64()).to_pylist()
    return {
        key: (customer, campaign, cost, bucket)
        for key, customer, campaign, cost, bucket in zip(
            candidates.column("key").to_pylist(),
            candidates.column("customer_id").to_pylist(),
            candidates.column("campaign_id").to_pylist(),
            candidates.column("cost").to_pylist(),
            buckets,
            strict=True,
        )
    }


def record_spend(client: Client, database: str, table: pa.Table, token: str) -> int:
    """Add the batch's not yet spent cost events to ``spend`` (steps 1-4 above); returns how
    many were new. ``token`` identifies the batch (the same on a replay), as for ``events``.
    The caller serializes (embedded: inside the engine's session; else ``serialized``).

    The batch's keys go to ``spend_candidates`` (a scratch table, emptied first) so that the
    lookup in ``spend_seen`` is one query of point reads, whatever the number of keys, and
    every insert is columnar."""
    ensure_backfilled(client, database)
    candidates = cost_candidates(table)
    if candidates.num_rows == 0:
        return 0
    client.command(f"TRUNCATE TABLE {database}.spend_candidates")
    client.insert_arrow(f"{database}.spend_candidates", candidates.select(["key"]))
    spent_by_others = client.query_arrow(
        f"SELECT key FROM {database}.spend_seen "
        f"WHERE key IN (SELECT key FROM {database}.spend_candidates) AND batch != {{token:String}}",
        parameters={"token": token},
    ).column("key")
    new = candidates.filter(
        pc.invert(
            pc.is_in(candidates.column("key"), value_set=pc.cast(spent_by_others, pa.string()))
        )
    )
    if new.num_rows == 0:
        return 0
    client.insert_arrow(
        f"{database}.spend_seen",
        pa.table({"key": new.column("key"), "batch": pa.repeat(token, new.num_rows)}),
    )
    crashpoint("after_spend_seen")
    client.insert_arrow(
        f"{database}.spend",
        _spend_rows(new),
        settings={"insert_deduplication_token": f"spend:{token}"},
    )
    crashpoint("after_spend")
    return new.num_rows


def _spend_rows(new: pa.Table) -> pa.Table:
    """Per (customer, campaign) the total, and per (15-minute bucket, customer, campaign) the
    same: the rows of ``spend`` for these cost events, in its ORDER BY order."""
    parts = []
    for kind, keys in (
        (TOTAL, ["customer_id", "campaign_id"]),
        (BUCKET, ["bucket", "customer_id", "campaign_id"]),
    ):
        sums = new.group_by(keys, use_threads=False).aggregate([("cost", "sum"), ("cost", "count")])
        n = sums.num_rows
        bucket = (
            sums.column("bucket")
            if kind == BUCKET
            else pa.repeat(pa.scalar(0, pa.timestamp("s", tz="UTC")), n)
        )
        parts.append(
            pa.table(
                {
                    "kind": pa.repeat(kind, n),
                    "bucket": bucket,
                    "customer_id": sums.column("customer_id"),
                    "campaign_id": sums.column("campaign_id"),
                    "cost": sums.column("cost_sum"),
                    "events": pc.cast(sums.column("cost_count"), pa.uint64()),
                }
            )
        )
    rows = pa.concat_tables(parts)
    return rows.sort_by(
        [(c, "ascending") for c in ("kind", "bucket", "customer_id", "campaign_id")]
    )


def is_backfilled(client: Client, database: str) -> bool:
    """Whether the one-time backfill is done (its marker row is there)."""
    query = f"SELECT count() FROM {database}.spend WHERE kind = 'backfilled'"
    return bool(client.query(query).result_rows[0][0])


_BACKFILLED: weakref.WeakKeyDictionary[Client, set[str]] = weakref.WeakKeyDictionary()


def ensure_backfilled(client: Client, database: str) -> bool:
    """Spend of the events landed before incremental spend, once; True if it ran now.

    Under the same serialization as ``record_spend``: no batch records while it runs. The
    marker is the last insert, so a crash anywhere before it redoes the whole backfill.
    Asked once per client and database: a landing run keeps its client open across batches."""
    known = _BACKFILLED.setdefault(client, set())
    if database in known:
        return False
    if is_backfilled(client, database):
        known.add(database)
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
    known.add(database)
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
