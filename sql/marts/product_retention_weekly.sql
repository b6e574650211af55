-- name: product_retention_weekly
-- description: Weekly retention cohorts per customer, as of each day (UTC). A user's cohort
--   is the ISO week (Monday) they were first seen within the lookback (EP_MARTS_RETENTION_WEEKS
--   weeks before the activity week, so users first seen earlier fall in the oldest cohort).
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
-- reconcile: sum(retained_users) == (SELECT count(DISTINCT (customer_id, user_id))
--   FROM activity_window WHERE event_date <= $event_date::DATE
--   AND event_date >= date_trunc('week', $event_date::DATE)::DATE)
WITH bounds AS (
    SELECT
        date_trunc('week', $event_date::DATE)::DATE AS activity_week,
        date_trunc('week', $event_date::DATE)::DATE - 7 * $retention_weeks AS lookback_start
),
users AS (  -- one row per user seen in the lookback: their cohort, and whether active now
    SELECT
        a.customer_id,
        a.user_id,
        date_trunc('week', min(a.event_date))::DATE AS cohort_week,
        bool_or(a.event_date >= b.activity_week) AS active
    FROM activity_window AS a, bounds AS b
    WHERE a.event_date >= b.lookback_start AND a.event_date <= $event_date::DATE
    GROUP BY a.customer_id, a.user_id
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
