-- Campaigns and their budgets, loaded by `eventplatform campaigns load FILE.csv`.
-- ReplacingMergeTree on version: a reload replaces a campaign's row (read with FINAL), so a
-- budget change takes effect at the next refresh, without a delete.
CREATE TABLE IF NOT EXISTS {database}.campaigns
(
    campaign_id   String,
    advertiser    String,
    total_budget  Float64,
    daily_budget  Float64,
    currency      LowCardinality(String),
    start_date    Date,
    end_date      Date,
    timezone      String,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY campaign_id;
