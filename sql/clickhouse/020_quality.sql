-- Consumer lag samples, written by the consumer_lag check each time it runs, so that it can
-- tell lag that keeps growing from lag that is merely high, and dashboards can plot it.
CREATE TABLE IF NOT EXISTS {database}.consumer_lag_samples
(
    ts     DateTime64(3, 'UTC'),
    topic  LowCardinality(String),
    grp    LowCardinality(String),
    lag    Int64
)
ENGINE = MergeTree
ORDER BY (topic, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY;
