-- name: product_active_users_daily
-- description: Active users per customer and day (UTC): daily, weekly (7 days ending that
--   day) and monthly (30 days ending that day) active users, sessions and events. A user is
--   active on a day when any of the customer's events that day carries their user_id.
-- owners: team:product-analytics
-- grain: event_date, customer_id
-- column event_date: Day (UTC); the partition.
-- column customer_id: The customer whose product the users use.
-- column dau: Distinct users active on the day.
-- column wau: Distinct users active in the 7 days ending on the day.
-- column mau: Distinct users active in the 30 days ending on the day.
-- column stickiness: dau / mau.
-- column sessions: Distinct session_id on the day.
-- column events: Events on the day (deduplicated by customer_id and event_id), all types.
-- reconcile: sum(events) == (SELECT count(*) FROM events)
-- reconcile: sum(dau) == (SELECT count(*) FROM day_users)
-- reconcile: sum(sessions) == (SELECT count(DISTINCT (customer_id, session_id)) FROM events
--   WHERE session_id IS NOT NULL)
WITH window_users AS (  -- user_activity: bit k of active_days = active on the day minus k
    SELECT
        customer_id,
        count(*) FILTER (WHERE active_days & 1::UBIGINT <> 0) AS dau,
        count(*) FILTER (WHERE active_days & 127::UBIGINT <> 0) AS wau,  -- 7 days
        count(*) AS mau
    FROM user_activity
    WHERE active_days & ((1::UBIGINT << 30) - 1) <> 0  -- active in the 30 days
    GROUP BY ALL
),
day AS (
    SELECT customer_id, count(DISTINCT session_id) AS sessions, count(*) AS events
    FROM events
    GROUP BY ALL
)
SELECT
    $event_date::DATE AS event_date,
    coalesce(w.customer_id, d.customer_id) AS customer_id,
    coalesce(w.dau, 0) AS dau,
    coalesce(w.wau, 0) AS wau,
    coalesce(w.mau, 0) AS mau,
    round(w.dau / nullif(w.mau, 0), 6) AS stickiness,
    coalesce(d.sessions, 0) AS sessions,
    coalesce(d.events, 0) AS events
FROM window_users AS w
FULL JOIN day AS d ON d.customer_id = w.customer_id
ORDER BY customer_id
