"""The bot-share check: each customer's share of landed events that enrichment flagged as bots.

A jump in a customer's bot share is a scraper or a scripted integration sending events, or a
sender's change that dropped the user agent: either way the marts (which leave bots out) see
less of that customer than it sends. Rows landed before enrichment (``is_bot`` null) count
as people. Thresholds: ``EP_QUALITY_BOT_SHARE_MAX`` and ``EP_QUALITY_BOT_MIN_EVENTS``, per
customer through ``EP_QUALITY_OVERRIDES``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from eventplatform.clickhouse import ClickHouse
from eventplatform.quality.checks import WARN, CheckOutcome, _outcome, ch_query
from eventplatform.settings import QualitySettings


def bot_share(ch: ClickHouse, q: QualitySettings, now: datetime) -> CheckOutcome:
    """Customers whose bot share in the window is above the limit (with enough events)."""
    rows = ch_query(
        ch,
        (
            "SELECT customer_id, count(), countIf(coalesce(is_bot, false)), "
            "topKIf(3)(bot_reason, is_bot) FROM {db}.events "
            "WHERE received_ts >= %(since)s AND received_ts < %(now)s "
            "GROUP BY customer_id ORDER BY customer_id"
        ),
        since=now - timedelta(minutes=q.window_minutes),
        now=now,
    )
    offenders, shares = [], {}
    for customer, n, bots, reasons in rows:
        share = bots / n if n else 0.0
        shares[customer] = round(share, 4)
        limit = q.for_customer(customer, "bot_share_max")
        if n >= q.for_customer(customer, "bot_min_events") and share > limit:
            offenders.append(
                f"{customer}: {bots} of {n} events are bots ({share:.1%}, limit {limit:.0%}; "
                f"reasons {', '.join(r for r in reasons if r) or 'n/a'})"
            )
    return _outcome(
        "bot_share",
        WARN,
        offenders,
        f"{len(rows)} customers within their bot share",
        f"{len(offenders)} of {len(rows)} customers above their bot share",
        customers=len(rows),
        max_bot_share=max(shares.values(), default=0.0),
    )
