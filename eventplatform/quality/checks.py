"""The quality checks: each returns an outcome with the numbers that explain it.

Every check is a plain function over the landed events in ClickHouse (or over Kafka), so it
can run from Dagster, from the CLI or from a test; ``defs/quality/`` wires them in as asset
checks and routes failures to the alert sinks. Where a check finds something, its evidence
names the customers, keys or campaigns, with the observed value and the threshold.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventplatform.clickhouse import ClickHouse
from eventplatform.quality.kafka_stats import DeadLetterSample
from eventplatform.settings import QualitySettings

ERROR, WARN = "ERROR", "WARN"


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # ERROR | WARN: how bad a failure is
    summary: str  # one line a human reads first
    evidence: list[str] = field(default_factory=list)  # one line per offender
    metadata: dict[str, Any] = field(default_factory=dict)  # the numbers, the baseline


def _naive(ts: datetime) -> datetime:
    """ClickHouse parameters: UTC wall time (the columns are DateTime64(3, 'UTC'))."""
    return ts.astimezone(UTC).replace(tzinfo=None)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _outcome(
    name: str, severity: str, offenders: list[str], ok: str, bad: str, **metadata: Any
) -> CheckOutcome:
    passed = not offenders
    return CheckOutcome(
        name,
        passed,
        severity,
        ok if passed else bad,
        offenders[:50],
        {"offenders": len(offenders), **metadata},
    )


def freshness(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """Every customer that sent in the lookback has landed events newer than the threshold.

    A quiet customer is not a stale one: the limit of a customer is at least the time in
    which it usually sends ``freshness_min_expected`` events (its rate over the lookback, from
    its first to its newest event), so a customer sending three events an hour at night is
    not flagged after fifteen silent minutes, while a stalled pipeline still is.
    """
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, max(landed_ts), max(received_ts), min(received_ts), count() "
            "FROM {db}.events "
            "WHERE received_ts >= %(since)s AND received_ts < %(now)s AND landed_ts <= %(now)s "
            "GROUP BY customer_id ORDER BY customer_id"
        ),
        since=now - timedelta(hours=q.freshness_lookback_hours),
        now=now,
    )
    stale, ages = [], {}
    for customer, landed, received, first, n in rows:
        age_min = (now - _utc(landed)).total_seconds() / 60
        ages[customer] = round(age_min, 1)
        limit = q.for_customer(customer, "freshness_minutes")
        span_min = (_utc(received) - _utc(first)).total_seconds() / 60
        if n > 1 and span_min > 0:
            per_minute = (n - 1) / span_min
            limit = max(limit, q.for_customer(customer, "freshness_min_expected") / per_minute)
        if age_min > limit:
            stale.append(
                f"{customer}: newest landed event {age_min:.1f} min old "
                f"(limit {limit:.3g} min; last received {_utc(received):%H:%M:%S} UTC)"
            )
    return _outcome(
        "freshness",
        ERROR,
        stale,
        f"{len(rows)} customers fresh (newest landed within limits)",
        f"{len(stale)} of {len(rows)} customers stale",
        customers=len(rows),
        max_age_minutes=max(ages.values(), default=0.0),
    )


def volume_anomaly(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """The last complete hour per customer against the same hour on previous days (median)."""
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    days = q.volume_baseline_days
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, toStartOfHour(received_ts) AS h, count() FROM {db}.events "
            "WHERE received_ts >= %(first)s AND received_ts < %(end)s "
            "AND toHour(received_ts) = %(hour)s GROUP BY customer_id, h"
        ),
        first=hour - timedelta(days=days),
        end=hour + timedelta(hours=1),
        hour=hour.hour,
    )
    counts: dict[str, dict[datetime, int]] = {}
    for customer, h, n in rows:
        counts.setdefault(customer, {})[_utc(h)] = n
    history_start = ch_query(ch, "SELECT min(received_ts) FROM {db}.events")[0][0]
    offenders, baselines = [], {}
    for customer, by_hour in sorted(counts.items()):
        previous_hours = [hour - timedelta(days=d) for d in range(1, days + 1)]
        covered = [
            h
            for h in previous_hours  # hours the landed history reaches into
            if history_start and h + timedelta(hours=1) > _utc(history_start)
        ]
        if len(covered) < q.volume_min_history_days:
            continue  # not enough history for a baseline
        baseline = statistics.median(by_hour.get(h, 0) for h in covered)
        current = by_hour.get(hour, 0)
        baselines[customer] = {"current": current, "baseline_median": baseline}
        spike = q.for_customer(customer, "volume_spike_factor")
        drop = q.for_customer(customer, "volume_drop_factor")
        if baseline >= q.for_customer(customer, "volume_min_baseline") or current >= q.for_customer(
            customer, "volume_min_baseline"
        ):
            if current > baseline * spike:
                offenders.append(
                    f"{customer}: spike, {current} events at {hour:%Y-%m-%d %H}h "
                    f"vs median {baseline:g} of the same hour on {len(covered)} "
                    f"previous days (> x{spike:g})"
                )
            elif current < baseline / drop:
                offenders.append(
                    f"{customer}: drop, {current} events at {hour:%Y-%m-%d %H}h "
                    f"vs median {baseline:g} of the same hour on {len(covered)} "
                    f"previous days (< /{drop:g})"
                )
    return _outcome(
        "volume_anomaly",
        WARN,
        offenders,
        f"volume normal for {len(baselines)} customers with a baseline (hour {hour:%Y-%m-%d %H}h)",
        f"{len(offenders)} customers with abnormal volume at {hour:%Y-%m-%d %H}h",
        hour=f"{hour:%Y-%m-%d %H}:00",
        customers_with_baseline=len(baselines),
    )


def dlq_rate(
    sample: DeadLetterSample,
    accepted: int,
    q: QualitySettings,
    accepted_by_customer: Mapping[str, int] | None = None,
) -> CheckOutcome:
    """Dead letters against everything that came in over the window, overall and, when the
    accepted events per customer are known, per customer: a small customer whose sender
    breaks barely moves the overall rate."""
    total = accepted + sample.total
    rate = sample.total / total if total else 0.0
    reasons = ", ".join(f"{r} {n}" for r, n in sample.by_reason.most_common(5))
    failed = rate > q.dlq_rate_max
    customers = []
    for customer, n in sample.by_customer.most_common():
        if accepted_by_customer is None:
            customers.append(f"{customer}: {n} dead letters")
            continue
        came_in = n + accepted_by_customer.get(customer, 0)
        limit = q.for_customer(customer, "dlq_rate_max")
        if n >= q.dlq_customer_min_events and n / came_in > limit:
            customers.append(
                f"{customer}: {n} dead letters of {came_in} events ({n / came_in:.1%}, "
                f"limit {limit:.0%})"
            )
        elif failed:
            customers.append(f"{customer}: {n} dead letters of {came_in} events")
    offenders = [c for c in customers if "limit" in c]
    customers = offenders + [c for c in customers if "limit" not in c]
    failed = failed or bool(offenders)
    return CheckOutcome(
        "dlq_rate",
        not failed,
        ERROR,
        f"dead-letter rate {rate:.2%} ({sample.total} of {total}) "
        f"{'above' if rate > q.dlq_rate_max else 'within'} {q.dlq_rate_max:.2%}"
        + (f"; {len(offenders)} customers above it" if offenders else "")
        + (f"; reasons: {reasons}" if sample.total else ""),
        customers[:10] if failed else [],
        {
            "dlq": sample.total,
            "accepted": accepted,
            "rate": round(rate, 5),
            "threshold": q.dlq_rate_max,
            "customers_above": len(offenders),
            "by_reason": dict(sample.by_reason),
        },
    )


def events_per_customer(ch: ClickHouse, since: datetime, now: datetime) -> dict[str, int]:
    """Landed events per customer received in [since, now): the per-customer denominator of
    ``dlq_rate`` (Kafka offsets do not tell customers apart). Events not landed yet are
    missing, which errs towards a higher rate; the minimum of dead letters absorbs it."""
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, count() FROM {db}.events "
            "WHERE received_ts >= %(since)s AND received_ts < %(now)s GROUP BY customer_id"
        ),
        since=since,
        now=now,
    )
    return dict(rows)


def duplicate_rate(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """Events landed more than once (same customer and event_id) per customer in the window."""
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, count(), uniqExact(event_id) FROM {db}.events "
            "WHERE received_ts >= %(since)s AND received_ts < %(now)s "
            "GROUP BY customer_id ORDER BY customer_id"
        ),
        since=now - timedelta(minutes=q.window_minutes),
        now=now,
    )
    offenders, total, dupes = [], 0, 0
    for customer, n, unique in rows:
        total, dupes = total + n, dupes + (n - unique)
        rate = (n - unique) / n if n else 0
        if rate > q.for_customer(customer, "duplicate_rate_max"):
            offenders.append(f"{customer}: {n - unique} duplicates of {n} ({rate:.2%})")
    return _outcome(
        "duplicate_rate",
        WARN,
        offenders,
        f"duplicate rate {dupes / total if total else 0:.3%} within limits",
        f"{len(offenders)} customers above the duplicate rate limit",
        events=total,
        duplicates=dupes,
        threshold=q.duplicate_rate_max,
    )


def foreign_campaign(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """Cost events, per customer, naming a campaign the sender does not own (another
    customer's, or one not loaded) in the window. They are never spent (budgets/spend.py):
    this check makes them seen. An error when another customer's campaign is named (an attempt
    on its budget, or a wrong owner in the campaigns file), a warning when the campaigns are
    only not loaded (the sender's spend is not tracked against any budget)."""
    from eventplatform.budgets.spend import foreign_cost_events

    found = foreign_cost_events(ch, now - timedelta(minutes=q.window_minutes), now)
    offenders = [
        f"{f.customer_id}: {f.events} cost events ({f.cost:g}) naming campaigns it does not "
        f"own ({f.owned_by_others} another customer's, {f.not_loaded} not loaded): "
        + ", ".join(f.campaigns)
        for f in found
    ]
    outcome = _outcome(
        "foreign_campaign",
        ERROR if any(f.owned_by_others for f in found) else WARN,
        offenders,
        "every cost event names a campaign its sender owns",
        f"{len(found)} customers sent cost events for campaigns they do not own (not spent)",
        foreign_events=sum(f.events for f in found),
        foreign_cost=round(sum(f.cost for f in found), 6),
        owned_by_others=sum(f.owned_by_others for f in found),
        not_loaded=sum(f.not_loaded for f in found),
    )
    outcome.metadata["by_customer"] = {f.customer_id: f.events for f in found}
    return outcome


def schema_drift(
    ch: ClickHouse, sample: DeadLetterSample, q: QualitySettings, now: datetime
) -> CheckOutcome:
    """Unknown event types or fields rejected, unknown writer schemas, a new schema version."""
    findings = []
    for (reason, detail), n in sample.details.most_common():
        if n < q.schema_drift_min_events:
            continue  # a stray event is a sender's typo; drift keeps coming
        if "unknown field" in detail or "unknown type" in detail or reason == "unknown_schema":
            findings.append(f"{n} x {reason}: {detail}")
    since = now - timedelta(minutes=q.window_minutes)
    versions = ch_query(
        ch,
        (
            "SELECT schema_version, min(received_ts), count() FROM {db}.events "
            "WHERE received_ts >= %(lookback)s AND received_ts < %(now)s "
            "GROUP BY schema_version ORDER BY schema_version"
        ),
        lookback=now - timedelta(days=q.volume_baseline_days),
        now=now,
    )
    for version, first_seen, n in versions:
        if _utc(first_seen) >= since and len(versions) > 1:
            findings.append(
                f"schema version {version} first seen {_utc(first_seen):%H:%M} UTC ({n} events)"
            )
    return _outcome(
        "schema_drift",
        WARN,
        findings,
        "no schema drift in the window",
        f"{len(findings)} signs of schema drift",
        versions={str(v): n for v, _, n in versions},
    )


def click_fraud(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """Abnormal click-through per site and campaign; click bursts from one IP or user."""
    since = now - timedelta(minutes=q.window_minutes)
    offenders = []
    ctr_rows = ch_query(
        ch,
        (
            "SELECT customer_id, site_id, campaign_id, countIf(event_type = 'impression') AS imps, "
            "countIf(event_type = 'ad_click') AS clicks FROM {db}.events "
            "WHERE received_ts >= %(since)s AND received_ts < %(now)s "
            "AND event_type IN ('impression', 'ad_click') "
            "GROUP BY customer_id, site_id, campaign_id HAVING imps > 0 ORDER BY clicks DESC"
        ),
        since=since,
        now=now,
    )
    for customer, site, campaign, imps, clicks in ctr_rows:
        ctr = clicks / imps
        if imps >= q.for_customer(customer, "ctr_min_impressions") and ctr > q.for_customer(
            customer, "ctr_max"
        ):
            offenders.append(
                f"{customer} site {site} campaign {campaign}: CTR {ctr:.1%} "
                f"({clicks} clicks / {imps} impressions, limit "
                f"{q.for_customer(customer, 'ctr_max'):.0%})"
            )
    for column in ("ip", "user_id"):
        burst_rows = ch_query(
            ch,
            (
                f"SELECT customer_id, {column}, count() AS clicks FROM {{db}}.events "
                "WHERE received_ts >= %(since)s AND received_ts < %(now)s "
                "AND event_type = 'ad_click' "
                f"AND {column} IS NOT NULL "
                f"GROUP BY customer_id, {column} HAVING clicks > %(limit)s ORDER BY clicks DESC "
                "LIMIT 20"
            ),
            since=since,
            now=now,
            limit=q.clicks_per_source_max,
        )
        for customer, source, clicks in burst_rows:
            if clicks > q.for_customer(customer, "clicks_per_source_max"):
                offenders.append(
                    f"{customer}: {clicks} ad clicks from {column} {source} in "
                    f"{q.window_minutes} min (limit {q.clicks_per_source_max})"
                )
    return _outcome(
        "click_fraud",
        ERROR,
        offenders,
        "click-through rates and click sources normal",
        f"{len(offenders)} signs of click fraud",
        site_campaigns=len(ctr_rows),
    )


def hot_keys(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """One customer taking most of the traffic, or one record (user, campaign) within one.

    A customer is hot when its share is above the limit and above its own usual share (over
    the baseline days before the window) by ``hot_customer_growth``: a customer that is
    always that big is a fact of the platform, not an anomaly. A key is hot when its share
    of the customer's events is above the limit and above ``hot_record_fair_factor`` times
    its fair share (1 / the customer's distinct keys; at most 80 %): an advertiser with four
    campaigns has one at 25 % every hour.
    """
    since = now - timedelta(minutes=q.window_minutes)
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, countIf(received_ts >= %(since)s) AS n, "
            "countIf(received_ts < %(since)s) AS before FROM {db}.events "
            "WHERE received_ts >= %(lookback)s AND received_ts < %(now)s GROUP BY customer_id"
        ),
        since=since,
        lookback=since - timedelta(days=q.volume_baseline_days),
        now=now,
    )
    total = sum(n for _, n, _ in rows)
    total_before = sum(b for _, _, b in rows)
    offenders = []
    if total >= q.hot_min_events:
        for customer, n, before in sorted(rows, key=lambda r: -r[1]):
            share, limit = n / total, q.for_customer(customer, "hot_customer_share")
            usual = before / total_before if total_before else 0.0
            if share > limit and share > usual * q.hot_customer_growth:
                usually = f"; usually {usual:.0%}" if total_before else ""
                offenders.append(
                    f"customer {customer}: {share:.0%} of {total} events "
                    f"(limit {limit:.0%}{usually})"
                )
    for column in ("user_id", "campaign_id"):
        key_rows = ch_query(
            ch,
            (
                f"SELECT customer_id, key, n, customer_total, keys FROM ("
                f"SELECT customer_id, {column} AS key, count() AS n, "
                f"sum(n) OVER (PARTITION BY customer_id) AS customer_total, "
                f"count() OVER (PARTITION BY customer_id) AS keys "
                f"FROM {{db}}.events WHERE received_ts >= %(since)s AND received_ts < %(now)s "
                f"AND {column} IS NOT NULL GROUP BY customer_id, {column}) "
                # the rules below, loosest over the overrides: the limit only caps evidence
                f"WHERE customer_total >= %(min_events)s AND keys > 1 "
                f"AND n / customer_total > greatest(%(share)s, least(%(fair)s / keys, 0.8)) "
                f"ORDER BY n DESC LIMIT 50"
            ),
            since=since,
            now=now,
            min_events=q.hot_min_events,
            fair=q.hot_record_fair_factor,
            share=min(
                [q.hot_record_share, *(o.get("hot_record_share", 1) for o in q.overrides.values())]
            ),
        )
        for customer, key, n, customer_total, keys in key_rows:
            share = n / customer_total
            # a customer's only campaign is not hot (the customer share rule sees it); with
            # two or three keys, twice the fair share would be out of reach: at most 80 %
            fair_limit = min(q.hot_record_fair_factor / keys, 0.8)
            limit = max(q.for_customer(customer, "hot_record_share"), fair_limit)
            if keys > 1 and customer_total >= q.hot_min_events and share > limit:
                offenders.append(
                    f"{customer} {column} {key}: {share:.0%} of the customer's "
                    f"{customer_total} events ({n}; {keys} {column} keys)"
                )
    return _outcome(
        "hot_keys",
        WARN,
        offenders,
        f"no hot key among {total} events",
        f"{len(offenders)} hot keys",
        events=total,
    )


def consumer_lag_check(
    lag_by_topic: dict[str, int],
    history: list[tuple[datetime, int]],
    q: QualitySettings,
    now: datetime,
) -> CheckOutcome:
    """Lag above the limit, or growing at every sample over the growth window."""
    offenders = [
        f"{topic}: {lag} messages behind (limit {q.lag_max_messages})"
        for topic, lag in lag_by_topic.items()
        if lag > q.lag_max_messages
    ]
    window = [
        (ts, lag) for ts, lag in history if ts >= now - timedelta(minutes=q.lag_growing_minutes)
    ]
    lags = [lag for _, lag in sorted(window)]
    spans_window = window and (now - min(ts for ts, _ in window)) >= timedelta(
        minutes=q.lag_growing_minutes * 0.8
    )
    if len(lags) >= 3 and spans_window and all(b > a for a, b in itertools.pairwise(lags)):
        offenders.append(
            f"total lag grew at every sample for {q.lag_growing_minutes:g} min: "
            f"{lags[0]} -> {lags[-1]}"
        )
    return _outcome(
        "consumer_lag",
        ERROR,
        offenders,
        f"consumer lag {sum(lag_by_topic.values())} messages, not growing",
        f"consumer lag: {len(offenders)} problems",
        **{f"lag_{t}": lag for t, lag in lag_by_topic.items()},
    )


def ch_query(ch: ClickHouse, sql: str, **params: Any) -> list[tuple]:
    bound = {k: _naive(v) if isinstance(v, datetime) else v for k, v in params.items()}
    with ch.session() as client:
        return client.query(sql.replace("{db}", ch.database), parameters=bound).result_rows
