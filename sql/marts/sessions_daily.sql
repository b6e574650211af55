-- name: sessions_daily
-- description: One row per visit (session) per customer and day (UTC): how long it lasted,
--   how many pages, where it entered and left, where it came from (UTM source), the
--   visitor's country and device class. A session is the customer's session_id when the
--   event carries one; otherwise a user's events with no gap of 30 minutes or more between
--   them (by event_ts). Sessions are cut at midnight UTC (the partition). Events with
--   neither user_id nor session_id belong to no session. Bots are left out (is_bot), as in
--   every mart.
-- owners: team:product-analytics
-- grain: event_date, customer_id, session_key
-- column event_date: Day (UTC); the partition.
-- column customer_id: The customer whose site or app was visited.
-- column session_key: The session_id sent, or '<user_id>#<n>' (the user's n-th visit of
--   the day by 30 minutes of inactivity).
-- column user_id: The visitor, when known.
-- column started_ts: The session's first event (event_ts, UTC), as text
--   'YYYY-MM-DD HH:MM:SS.mmm' (sorts as time; the ClickHouse mirror takes no timestamps).
-- column ended_ts: Its last event, the same way.
-- column length_s: ended_ts - started_ts in seconds (0 for a single event).
-- column events: Events in the session (deduplicated by customer_id and event_id).
-- column pages: page_view events in the session.
-- column entry_url: URL of the first page_view (or first event with a URL).
-- column exit_url: URL of the last page_view (or last event with a URL).
-- column utm_source: utm_source of the first event that has one.
-- column referrer_class: referrer_class of the first event that has one.
-- column country: geo_country (from the IP, before anonymisation) of the first event that
--   has one.
-- column device_class: device_class (desktop, mobile, tablet, ctv) of the first event that
--   has one.
-- reconcile: sum(events) == (SELECT count(*) FROM events WHERE session_id IS NOT NULL
--   OR user_id IS NOT NULL)
-- reconcile: sum(pages) == (SELECT count(*) FROM events WHERE event_type = 'page_view'
--   AND (session_id IS NOT NULL OR user_id IS NOT NULL))
-- reconcile: count(*) FILTER (WHERE session_key NOT LIKE '%#%') == (SELECT count(DISTINCT
--   (customer_id, session_id)) FROM events WHERE session_id IS NOT NULL)
-- A user's events without a session_id make visits cut by 30 idle minutes. Two events in the
-- same half hour of the day (a "slot") are less than 30 minutes apart, so within a slot only
-- its first event can start a visit: when the user's previous slot ended 30 minutes or more
-- before it. What is put in order is a user's slots (48 a day at most, however many events),
-- not their events, and each event takes its slot's visit. Events with a session_id are
-- grouped by it as they come: a hash table, no sort. (arg_min and arg_max skip null values:
-- "the first event that has one" needs no filter.)
WITH slots AS (
    SELECT
        customer_id,
        user_id,
        epoch_ms(event_ts) // 1800000 AS slot,
        min(event_ts) AS first_ts,
        max(event_ts) AS last_ts
    FROM events
    WHERE session_id IS NULL AND user_id IS NOT NULL
    GROUP BY ALL
),
slot_visits AS (  -- each slot's visit: the visits started up to it
    SELECT
        customer_id,
        user_id,
        slot,
        sum(starts_visit::INTEGER) OVER (
            PARTITION BY customer_id, user_id ORDER BY slot ROWS UNBOUNDED PRECEDING
        ) AS visit
    FROM (
        SELECT
            *,
            coalesce(
                first_ts - lag(last_ts) OVER (PARTITION BY customer_id, user_id ORDER BY slot)
                    >= INTERVAL 30 MINUTE,
                true
            ) AS starts_visit
        FROM slots
    )
),
keyed AS (  -- the day read once: each event's session_id, or its slot's visit
    SELECT
        e.customer_id,
        coalesce(e.session_id, e.user_id || '#' || v.visit) AS session_key,
        e.user_id, e.event_ts, e.event_type, e.url, e.utm_source, e.referrer_class,
        e.geo_country, e.device_class
    FROM events AS e
    LEFT JOIN slot_visits AS v
        ON v.customer_id = e.customer_id
        AND v.user_id = e.user_id
        AND v.slot = CASE WHEN e.session_id IS NULL THEN epoch_ms(e.event_ts) // 1800000 END
    WHERE e.session_id IS NOT NULL OR e.user_id IS NOT NULL
)
SELECT
    $event_date::DATE AS event_date,
    customer_id,
    session_key,
    min(user_id) AS user_id,
    strftime(min(event_ts), '%Y-%m-%d %H:%M:%S.%g') AS started_ts,
    strftime(max(event_ts), '%Y-%m-%d %H:%M:%S.%g') AS ended_ts,
    round(epoch(max(event_ts)) - epoch(min(event_ts)), 3) AS length_s,
    count(*) AS events,
    count(*) FILTER (WHERE event_type = 'page_view') AS pages,
    coalesce(
        arg_min(url, event_ts) FILTER (WHERE event_type = 'page_view'),
        arg_min(url, event_ts)
    ) AS entry_url,
    coalesce(
        arg_max(url, event_ts) FILTER (WHERE event_type = 'page_view'),
        arg_max(url, event_ts)
    ) AS exit_url,
    arg_min(utm_source, event_ts) AS utm_source,
    arg_min(referrer_class, event_ts) AS referrer_class,
    arg_min(geo_country, event_ts) AS country,
    arg_min(device_class, event_ts) AS device_class
FROM keyed
GROUP BY customer_id, session_key
ORDER BY customer_id, session_key
