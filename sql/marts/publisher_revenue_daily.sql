-- name: publisher_revenue_daily
-- description: What each publisher earned per day (UTC), by customer, publisher, site and
--   currency: impressions, clicks, conversions, revenue (the publisher's share), what
--   advertisers paid for the same events, the platform's margin and the publisher's eCPM.
--   Events counted once (deduplicated by customer_id and event_id).
-- owners: team:publisher-ops, team:analytics
-- grain: event_date, customer_id, publisher_id, site_id, currency
-- column event_date: Day of the events (event_ts, UTC); the partition.
-- column customer_id: The platform customer (ad network) that sent the events.
-- column publisher_id: The publisher.
-- column site_id: The publisher's site.
-- column currency: Currency of the amounts.
-- column impressions: Impression events on the site.
-- column clicks: ad_click events on the site.
-- column conversions: Conversion events attributed to the site.
-- column revenue: The publisher's revenue: sum of revenue.
-- column advertiser_cost: What advertisers paid for these events: sum of cost.
-- column margin: advertiser_cost - revenue, the platform's take.
-- column ecpm: Publisher eCPM: revenue * 1000 / impressions (NULL without impressions).
-- reconcile: sum(impressions + clicks + conversions) == (SELECT count(*) FROM events
--   WHERE event_type IN ('impression', 'ad_click', 'conversion'))
-- reconcile: sum(revenue) == (SELECT coalesce(sum(revenue), 0) FROM events
--   WHERE event_type IN ('impression', 'ad_click', 'conversion'))
WITH ad AS (
    SELECT
        customer_id,
        publisher_id,
        site_id,
        currency,
        count(*) FILTER (WHERE event_type = 'impression') AS impressions,
        count(*) FILTER (WHERE event_type = 'ad_click') AS clicks,
        count(*) FILTER (WHERE event_type = 'conversion') AS conversions,
        coalesce(sum(revenue), 0) AS revenue,
        coalesce(sum(cost), 0) AS advertiser_cost
    FROM events
    WHERE event_type IN ('impression', 'ad_click', 'conversion')
    GROUP BY ALL
)
SELECT
    $event_date::DATE AS event_date,
    customer_id,
    publisher_id,
    site_id,
    currency,
    impressions,
    clicks,
    conversions,
    round(revenue, 6) AS revenue,
    round(advertiser_cost, 6) AS advertiser_cost,
    round(advertiser_cost - revenue, 6) AS margin,
    round(revenue * 1000 / nullif(impressions, 0), 6) AS ecpm
FROM ad
ORDER BY customer_id, publisher_id, site_id, currency
