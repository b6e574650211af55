-- name: product_funnel_daily
-- description: The product funnel per customer and day (UTC), steps from EP_MARTS_FUNNEL_STEPS
--   (default page_view -> click -> signup -> purchase). A user reaches step k on the day when
--   they did step k's event at or after reaching step k-1 (ordered, same day, any session).
--   One row per customer and step (zeros included) for customers with users at step 1.
-- owners: team:product-analytics
-- grain: event_date, customer_id, step
-- column event_date: Day (UTC); the partition.
-- column customer_id: The customer.
-- column step: Position in the funnel, from 1.
-- column step_name: The event type of the step.
-- column users: Distinct users who reached the step that day.
-- column conversion_from_previous: users / users at the previous step (NULL at step 1).
-- column conversion_from_start: users / users at step 1.
-- reconcile: sum(users) FILTER (WHERE step = 1) == (SELECT count(DISTINCT (customer_id, user_id))
--   FROM events WHERE user_id IS NOT NULL
--   AND event_type = (SELECT event_type FROM funnel_steps WHERE step = 1))
-- reconcile: count(*) FILTER (WHERE conversion_from_previous > 1) == 0
WITH RECURSIVE funnel_events AS MATERIALIZED (  -- only the funnel's events, with their step
    SELECT e.customer_id, e.user_id, s.step, e.event_ts
    FROM events AS e
    JOIN funnel_steps AS s ON s.event_type = e.event_type
    WHERE e.user_id IS NOT NULL
),
reached(customer_id, user_id, step, reached_ts) AS (
    SELECT customer_id, user_id, 1, min(event_ts)
    FROM funnel_events
    WHERE step = 1
    GROUP BY ALL
    UNION ALL
    SELECT r.customer_id, r.user_id, r.step + 1, min(f.event_ts)
    FROM reached AS r
    JOIN funnel_events AS f
        ON f.customer_id = r.customer_id
        AND f.user_id = r.user_id
        AND f.step = r.step + 1
        AND f.event_ts >= r.reached_ts
    GROUP BY ALL
),
per_step AS (
    SELECT customer_id, step, count(*) AS users FROM reached GROUP BY ALL
),
grid AS (
    SELECT c.customer_id, s.step, s.event_type AS step_name, coalesce(p.users, 0) AS users
    FROM (SELECT DISTINCT customer_id FROM per_step) AS c
    CROSS JOIN funnel_steps AS s
    LEFT JOIN per_step AS p ON p.customer_id = c.customer_id AND p.step = s.step
)
SELECT
    $event_date::DATE AS event_date,
    customer_id,
    step,
    step_name,
    users,
    round(users / nullif(lag(users) OVER w, 0), 6) AS conversion_from_previous,
    round(users / nullif(first_value(users) OVER w, 0), 6) AS conversion_from_start
FROM grid
WINDOW w AS (PARTITION BY customer_id ORDER BY step)
ORDER BY customer_id, step
