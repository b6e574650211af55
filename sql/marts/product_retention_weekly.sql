-- name: product_retention_weekly
-- description: Weekly retention cohorts per customer, as of each day (UTC). A user's cohort
--   is the ISO week (Monday) they were first seen within the lookback (EP_MARTS_RETENTION_WEEKS
--   weeks before the activity week; a user also seen before it counts from their first day
--   within it).
--   The partition of day D holds the activity week containing D, counted up to D: the row of
--   a week's Sunday is the complete figure (see the README for a query of the final matrix).
-- owners: team:product-analytics
-- grain: event_date, customer_id, cohort_week
-- column event_date: The day the figures are as of (UTC); the partition.
-- column customer_id: The customer.
-- column activity_week: Monday of the week the activity is counted in (contains event_date).
-- column cohort_week: Monday of the week the users were first seen (within the lookback).
-- column week_number: Weeks from cohort_week to activity_week (0 = the cohort's first week).
-- column cohort_users: Users first seen in cohort_week (up to event_date).
-- column retained_users: Of those, users active in activity_week up to event_date.
-- column retention: retained_users / cohort_users.
-- reconcile: sum(retained_users) == (SELECT count(*) FROM user_activity
--   WHERE active_days & ((1::UBIGINT << ($event_date::DATE
--   - date_trunc('week', $event_date::DATE)::DATE + 1)) - 1) <> 0)
WITH bounds AS (
    SELECT
        date_trunc('week', $event_date::DATE)::DATE AS activity_week,
        date_trunc('week', $event_date::DATE)::DATE - 7 * $retention_weeks AS lookback_start
),
seen AS (  -- each user's active days within the lookback (bit k: active on the day minus k)
    SELECT
        a.customer_id,
        (a.active_days & ((1::UBIGINT << ($event_date::DATE - b.lookback_start + 1)) - 1))::UBIGINT
            AS days,
        $event_date::DATE - b.activity_week + 1 AS week_days
    FROM user_activity AS a, bounds AS b
),
users AS (  -- one row per user seen in the lookback: their cohort, and whether active now
    SELECT
        customer_id,
        -- the highest bit set is the earliest day seen: with every bit under it set too
        -- ("smeared"), its position is the bit count minus one
        days | (days >> 1) AS s1,
        s1 | (s1 >> 2) AS s2,
        s2 | (s2 >> 4) AS s4,
        s4 | (s4 >> 8) AS s8,
        s8 | (s8 >> 16) AS s16,
        s16 | (s16 >> 32) AS smeared,
        date_trunc('week', $event_date::DATE - (bit_count(smeared) - 1)::INTEGER)::DATE
            AS cohort_week,
        days & ((1::UBIGINT << week_days) - 1) <> 0 AS active
    FROM seen
    WHERE days <> 0
),
cohorts AS (
    SELECT
        customer_id,
        cohort_week,
        count(*) AS cohort_users,
        count(*) FILTER (WHERE active) AS retained_users
    FROM users
    GROUP BY ALL
)
SELECT
    $event_date::DATE AS event_date,
    c.customer_id,
    b.activity_week,
    c.cohort_week,
    ((b.activity_week - c.cohort_week) // 7)::BIGINT AS week_number,
    c.cohort_users,
    c.retained_users,
    round(c.retained_users / c.cohort_users, 6) AS retention
FROM cohorts AS c, bounds AS b
WHERE c.retained_users > 0
ORDER BY customer_id, cohort_week
