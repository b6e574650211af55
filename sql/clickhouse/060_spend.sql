-- Incremental spend (issues 14 and 16): kept per batch by the landing run, so a budget
-- refresh reads a few rows per campaign instead of every cost event ever landed
-- (eventplatform/land/spend.py, docs/budgets.md).
--
-- spend_seen: every distinct cost event (customer_id:event_id) that was spent, and the batch
-- (its deduplication token) that spent it. A key-value store (point lookups by key), so a
-- batch's check "already spent?" costs the same with 1M or 1B events behind it.
CREATE TABLE IF NOT EXISTS {database}.spend_seen
(
    key    String,
    batch  String
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY key;
-- spend: per (customer_id, campaign_id) the total, and per 15-minute bucket of event_ts the
-- same, of the cost events spent, whoever owns the campaign (ownership is applied when it is
-- read, so a campaign loaded after its events counts them). One insert per batch, one part
-- (no partitions), with the batch's deduplication token: a replayed batch is dropped whole.
-- kind 'backfilled' is one row, written last by the one-time backfill from the landed events.
CREATE TABLE IF NOT EXISTS {database}.spend
(
    kind         Enum8('total' = 1, 'bucket' = 2, 'backfilled' = 3),
    bucket       DateTime('UTC'),
    customer_id  LowCardinality(String),
    campaign_id  String,
    cost         Float64,
    events       UInt64
)
ENGINE = SummingMergeTree((cost, events))
ORDER BY (kind, bucket, customer_id, campaign_id)
SETTINGS non_replicated_deduplication_window = 100000,
    fsync_after_insert = 1, fsync_part_directory = 1;
-- spend_backfill: the first copy of each landed cost event, staged by the one-time backfill
-- (in slices by key hash, so its memory is a slice's) and emptied after it.
CREATE TABLE IF NOT EXISTS {database}.spend_backfill
(
    customer_id    LowCardinality(String),
    event_id       String,
    named_campaign String,
    event_cost     Float64,
    event_time     DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY tuple();

-- spend_candidates: scratch for one batch's spend (land/spend.py: its keys, looked up in
-- spend_seen in one query of point reads). Emptied by each batch; only ever used under the
-- spend's serialization, so one batch's keys at a time.
CREATE TABLE IF NOT EXISTS {database}.spend_candidates
(
    key String
)
ENGINE = Memory;
