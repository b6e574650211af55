-- name: customer_usage_daily
-- description: What each customer sent per day (UTC), by event type: what a platform bills
--   and watches. Events counted once (deduplicated by customer_id and event_id), the
--   duplicates dropped, how many came through the overflow topic (over quota), their size,
--   and dead letters (events.dlq, by the day they were dead-lettered) in rows whose
--   event_type is '(dead letter)'. Bots count: a customer is billed for what it sent.
-- owners: team:data-platform, team:billing
-- grain: event_date, customer_id, event_type
-- column event_date: Day of the events (event_ts, UTC), or of the dead letters (dead_ts, UTC).
-- column customer_id: The customer; '(unknown)' for dead letters whose customer is not known.
-- column event_type: The event type, or '(dead letter)' for the dead-letter row.
-- column events: Distinct events (by customer_id and event_id) landed for the day.
-- column duplicates_dropped: Landed rows beyond the first for the same customer_id and
--   event_id (retries, replays); not counted in events.
-- column overflow_events: Of events, those that came through the overflow topic (the
--   customer was over its quota).
-- column dead_letters: Dead letters (rejected or undecodable), only on '(dead letter)' rows.
-- column bytes: Size: for events, the landed row uncompressed (UTF-8 bytes of text fields,
--   8 per number or timestamp, 4 per 32-bit integer, 1 per boolean); for dead letters, the
--   bytes of the original message.
-- column users: Distinct user_id among the events.
-- reconcile: sum(events) == (SELECT count(*) FROM billed_events)
-- reconcile: sum(events) == (SELECT count(*) FROM billed_events_raw)
--   - (SELECT count(*) FROM billed_events_repeated)
--   + (SELECT count(DISTINCT (customer_id, event_id)) FROM billed_events_repeated)
-- reconcile: sum(events + duplicates_dropped) == (SELECT count(*) FROM billed_events_raw)
-- reconcile: sum(overflow_events) == (SELECT count(*) FROM billed_events WHERE is_overflow)
-- reconcile: sum(dead_letters) == (SELECT count(*) FROM dead_letters)
WITH landed AS (
    SELECT customer_id, event_type, count(*) AS landed_rows
    FROM billed_events_raw
    GROUP BY ALL
),
counted AS (
    SELECT
        customer_id,
        event_type,
        count(*) AS events,
        count(*) FILTER (WHERE is_overflow) AS overflow_events,
        sum_event_bytes() AS bytes,  -- sum(event_bytes), one aggregate per column
        count(DISTINCT user_id) AS users
    FROM billed_events
    GROUP BY ALL
),
dead AS (
    SELECT
        coalesce(customer_id, '(unknown)') AS customer_id,
        '(dead letter)' AS event_type,
        count(*) AS dead_letters,
        sum(bytes)::BIGINT AS bytes
    FROM dead_letters
    GROUP BY ALL
)
SELECT
    $event_date::DATE AS event_date,
    customer_id,
    event_type,
    events,
    landed_rows - events AS duplicates_dropped,
    overflow_events,
    0::BIGINT AS dead_letters,
    bytes,
    users
FROM counted
JOIN landed USING (customer_id, event_type)
UNION ALL
SELECT
    $event_date::DATE AS event_date,
    customer_id,
    event_type,
    0::BIGINT AS events,
    0::BIGINT AS duplicates_dropped,
    0::BIGINT AS overflow_events,
    dead_letters,
    bytes,
    0::BIGINT AS users
FROM dead
ORDER BY customer_id, event_type
