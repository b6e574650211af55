-- name: campaign_performance_daily
-- description: Ad delivery and money per day (UTC) by customer, campaign, advertiser, site,
--   publisher, device and currency: impressions, clicks, conversions, CTR, CVR, cost, revenue,
--   eCPM. One row per combination seen that day. Events are counted once (deduplicated by
--   customer_id and event_id). The contract has no country field, so country is not a
--   dimension. The advertiser comes from the campaigns table (ClickHouse) as it was when the
--   day was built, only for the campaign's owner: a customer naming another's campaign is
--   not shown its advertiser.
-- owners: team:ad-ops, team:analytics
-- grain: event_date, customer_id, campaign_id, site_id, publisher_id, device, currency
-- column event_date: Day of the events (event_ts, UTC); the partition.
-- column customer_id: The platform customer (ad network) that sent the events.
-- column campaign_id: Campaign of the ad.
-- column advertiser: The campaign's advertiser from the campaigns table; NULL when the
--   campaign is not loaded there or belongs to another customer.
-- column site_id: Site where the ad was shown.
-- column publisher_id: Publisher owning the site.
-- column device: Device class of the viewer (NULL when the sender did not say).
-- column currency: Currency of cost and revenue (never summed across currencies).
-- column impressions: Impression events.
-- column clicks: ad_click events.
-- column conversions: Conversion events.
-- column ctr: clicks / impressions (NULL without impressions).
-- column cvr: conversions / clicks (NULL without clicks).
-- column cost: What the advertiser pays: sum of cost over impressions, clicks and conversions.
-- column revenue: What the publisher earns: sum of revenue over the same events.
-- column conversion_value: Sum of the value advertisers attach to conversions.
-- column ecpm: Effective cost per thousand impressions: cost * 1000 / impressions.
-- reconcile: sum(impressions) == (SELECT count(*) FROM events WHERE event_type = 'impression')
-- reconcile: sum(clicks) == (SELECT count(*) FROM events WHERE event_type = 'ad_click')
-- reconcile: sum(conversions) == (SELECT count(*) FROM events WHERE event_type = 'conversion')
-- reconcile: sum(cost) == (SELECT coalesce(sum(cost), 0) FROM events
--   WHERE event_type IN ('impression', 'ad_click', 'conversion'))
-- reconcile: sum(revenue) == (SELECT coalesce(sum(revenue), 0) FROM events
--   WHERE event_type IN ('impression', 'ad_click', 'conversion'))
WITH ad AS (  -- per grain first: the advertiser is joined to these rows, not to every event
    SELECT
        customer_id,
        campaign_id,
        site_id,
        publisher_id,
        device,
        currency,
        count(*) FILTER (WHERE event_type = 'impression') AS impressions,
        count(*) FILTER (WHERE event_type = 'ad_click') AS clicks,
        count(*) FILTER (WHERE event_type = 'conversion') AS conversions,
        coalesce(sum(cost), 0) AS cost,
        coalesce(sum(revenue), 0) AS revenue,
        coalesce(sum(value) FILTER (WHERE event_type = 'conversion'), 0) AS conversion_value
    FROM events
    WHERE event_type IN ('impression', 'ad_click', 'conversion')
    GROUP BY ALL
)
SELECT
    $event_date::DATE AS event_date,
    ad.customer_id,
    ad.campaign_id,
    c.advertiser,
    site_id,
    publisher_id,
    device,
    currency,
    impressions,
    clicks,
    conversions,
    round(clicks / nullif(impressions, 0), 6) AS ctr,
    round(conversions / nullif(clicks, 0), 6) AS cvr,
    round(cost, 6) AS cost,
    round(revenue, 6) AS revenue,
    round(conversion_value, 6) AS conversion_value,
    round(cost * 1000 / nullif(impressions, 0), 6) AS ecpm
FROM ad
LEFT JOIN campaigns AS c ON c.campaign_id = ad.campaign_id AND c.owner = ad.customer_id
ORDER BY customer_id, campaign_id, site_id, publisher_id, device, currency
