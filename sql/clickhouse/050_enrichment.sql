-- The enriched columns (eventplatform/enrich/, docs/enrichment.md), appended after the Kafka
-- columns in the order of eventplatform/events/arrow.py's ENRICHED_FIELDS. Additive: rows
-- landed before have them null (or false for is_bot), nothing is rewritten.
ALTER TABLE {database}.events
    ADD COLUMN IF NOT EXISTS ua_browser         LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS ua_browser_major   LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS ua_os              LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS ua_os_version      LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS ua_device          LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS device_class       LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS is_bot             Nullable(Bool),
    ADD COLUMN IF NOT EXISTS bot_reason         LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS geo_country        LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS ip_mode            LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS utm_source         Nullable(String),
    ADD COLUMN IF NOT EXISTS utm_medium         Nullable(String),
    ADD COLUMN IF NOT EXISTS utm_campaign       Nullable(String),
    ADD COLUMN IF NOT EXISTS utm_term           Nullable(String),
    ADD COLUMN IF NOT EXISTS utm_content        Nullable(String),
    ADD COLUMN IF NOT EXISTS gclid              Nullable(String),
    ADD COLUMN IF NOT EXISTS fbclid             Nullable(String),
    ADD COLUMN IF NOT EXISTS referrer_host      Nullable(String),
    ADD COLUMN IF NOT EXISTS referrer_class     LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS reporting_currency LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS fx_rate            Nullable(Float64),
    ADD COLUMN IF NOT EXISTS amount_reporting   Nullable(Float64),
    ADD COLUMN IF NOT EXISTS cost_reporting     Nullable(Float64),
    ADD COLUMN IF NOT EXISTS revenue_reporting  Nullable(Float64),
    ADD COLUMN IF NOT EXISTS enrich_version     LowCardinality(Nullable(String));
