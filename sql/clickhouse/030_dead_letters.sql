-- Dead letters landed from events.dlq: what the collector rejected and what the landing job
-- could not decode, with the reason and the original bytes (the same columns as the lake's
-- dead_letters/ folder, eventplatform/kafka/dlq.py DEAD_LETTER_SCHEMA). Inserted with a
-- deduplication token per batch, like the events.
CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    reason           LowCardinality(String),
    detail           String,
    stage            LowCardinality(String),
    customer_id      LowCardinality(Nullable(String)),
    source_topic     LowCardinality(Nullable(String)),
    source_partition Nullable(Int32),
    source_offset    Nullable(Int64),
    dead_ts          DateTime64(3, 'UTC'),
    value            String,
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(dead_ts)
ORDER BY (stage, reason, dead_ts)
SETTINGS non_replicated_deduplication_window = 100000;
