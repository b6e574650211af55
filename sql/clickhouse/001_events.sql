-- Landed events: one row per event, the same columns as the Parquet lake
-- (eventplatform/events/arrow.py, checked by a test). The landing job inserts each
-- micro-batch with an insert_deduplication_token derived from its offset ranges, and the
-- deduplication window below makes a retried batch a no-op: a crash between the insert and
-- the offset commit does not duplicate rows.
CREATE TABLE IF NOT EXISTS {database}.events
(
    event_id        String,
    event_type      LowCardinality(String),
    event_ts        DateTime64(3, 'UTC'),
    received_ts     DateTime64(3, 'UTC'),
    customer_id     LowCardinality(String),
    source          LowCardinality(String),
    schema_version  Int32,
    user_id         Nullable(String),
    session_id      Nullable(String),
    ip              Nullable(String),
    user_agent      Nullable(String),
    device          LowCardinality(Nullable(String)),
    url             Nullable(String),
    referrer        Nullable(String),
    title           Nullable(String),
    duration_ms     Nullable(Int64),
    element         Nullable(String),
    plan            LowCardinality(Nullable(String)),
    method          LowCardinality(Nullable(String)),
    order_id        Nullable(String),
    amount          Nullable(Float64),
    currency        LowCardinality(Nullable(String)),
    items           Nullable(Int32),
    campaign_id     Nullable(String),
    site_id         Nullable(String),
    publisher_id    Nullable(String),
    ad_id           Nullable(String),
    pricing_model   LowCardinality(Nullable(String)),
    cost            Nullable(Float64),
    revenue         Nullable(Float64),
    value           Nullable(Float64),
    bid_price       Nullable(Float64),
    won             Nullable(Bool),
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    landed_ts       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_ts)
ORDER BY (customer_id, event_type, event_ts, event_id)
SETTINGS non_replicated_deduplication_window = 100000;
