"""A small lake whose true figures are known, for the marts tests.

Days: D0 = Tue 2026-11-10 (the week before), D1 = Mon 2026-11-16, D2 = Tue 2026-11-17.
Customer ``adnet`` sends ad events, ``shop`` product events; every amount is exact in binary.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa

from eventplatform.events.arrow import events_to_arrow
from eventplatform.kafka.dlq import DEAD_LETTER_SCHEMA
from eventplatform.land.lake import OffsetRange, write_dead_letters, write_events
from eventplatform_tests.helpers import decoded_event

D0, D1, D2 = date(2026, 11, 10), date(2026, 11, 16), date(2026, 11, 17)
RAW, OVERFLOW = "events.raw", "events.overflow"
_offsets = itertools.count(1000)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def event(event_type: str, customer: str, when: datetime, payload=None, **envelope) -> dict:
    ms = int(when.timestamp() * 1000)
    return decoded_event(event_type, customer, when, payload=payload, event_ts=ms, **envelope)


def ad(event_type: str, day: date, campaign: str, site: str, device: str, cost, revenue, **extra):
    payload = {"campaign_id": campaign, "site_id": site, "publisher_id": "p-1"}
    payload.update({"cost": cost, "revenue": revenue, "currency": "USD", **extra})
    return event(
        event_type,
        "adnet",
        at(day, 9),
        payload,
        user_id="viewer-1",
        session_id="vs-1",
        device=device,
    )


def land(lake: Path, events: list[dict], topic: str = RAW, landed: datetime | None = None):
    """Land events as one batch of one partition (a new file: fresh offsets)."""
    first = next(_offsets)
    offsets = list(range(first, first + len(events)))
    for _ in events[1:]:
        next(_offsets)
    landed_ms = int((landed or at(D2, 23)).timestamp() * 1000)
    table = events_to_arrow(events, topic, 0, offsets, landed_ms)
    return write_events(lake, table, [OffsetRange(topic, 0, offsets[0], offsets[-1])])


def dead_letters(lake: Path, day: date, customers: list[str | None]) -> list[bytes]:
    values = [f"bad event {i} of {c}".encode() for i, c in enumerate(customers)]
    table = pa.Table.from_pylist(
        [
            {
                "reason": "validation",
                "detail": "payload.amount: expected number",
                "stage": "collect",
                "customer_id": c,
                "source_topic": None,
                "source_partition": None,
                "source_offset": None,
                "dead_ts": at(day, 12),
                "value": v,
                "kafka_partition": 0,
                "kafka_offset": i,
            }
            for i, (c, v) in enumerate(zip(customers, values, strict=True))
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
    write_dead_letters(lake, table, [OffsetRange("events.dlq", 0, 0, len(customers) - 1)])
    return values


def product(event_type: str, user: str, session: str, when: datetime) -> dict:
    return event(event_type, "shop", when, user_id=user, session_id=session)


def make_lake(lake: Path) -> dict[str, list[dict]]:
    """Writes the known lake; returns the events landed per group (for byte counts)."""
    ad_d1 = (
        [ad("impression", D1, "cmp-1", "s-1", "mobile", 0.25, 0.125) for _ in range(4)]
        + [ad("ad_click", D1, "cmp-1", "s-1", "mobile", 0.5, 0.25) for _ in range(2)]
        + [ad("conversion", D1, "cmp-1", "s-1", "mobile", 2.0, 1.0, value=40.0)]
        + [ad("impression", D1, "cmp-2", "s-2", "desktop", 0.25, 0.125) for _ in range(2)]
    )
    ad_d2 = [ad("impression", D2, "cmp-1", "s-1", "mobile", 0.25, 0.125)]
    u1 = [
        product("page_view", "u1", "s1", at(D1, 10, 0)),
        product("click", "u1", "s1", at(D1, 10, 1)),
        product("signup", "u1", "s1", at(D1, 10, 2)),
        product("purchase", "u1", "s1", at(D1, 10, 3)),
    ]
    others = [
        product("page_view", "u2", "s2", at(D1, 10, 0)),
        product("click", "u2", "s2", at(D1, 10, 5)),
        product("signup", "u2", "s2", at(D1, 9, 0)),  # before the click: not a funnel step 3
        product("click", "u3", "s3", at(D1, 11, 0)),  # before the page view: not step 2
        product("page_view", "u3", "s3", at(D1, 11, 5)),
    ]
    overflowed = [
        product("page_view", "u4", "s4a", at(D1, 12)),
        product("page_view", "u4", "s4b", at(D1, 13)),
    ]
    week_before = [
        product("page_view", "u1", "s0", at(D0, 8)),
        product("page_view", "u6", "s6", at(D0, 8)),
    ]
    shop_d2 = [
        product("page_view", "u1", "s7", at(D2, 8)),
        product("page_view", "u5", "s5", at(D2, 9)),
    ]

    land(lake, ad_d1)
    land(lake, ad_d2)
    land(lake, u1)
    land(lake, u1)  # the same batch replayed into a new file: duplicates by event_id
    land(lake, others)
    land(lake, overflowed, topic=OVERFLOW)
    land(lake, week_before)
    land(lake, shop_d2)
    dead = dead_letters(lake, D1, ["shop", "shop", None])
    return {"ad_d1": ad_d1, "shop_d1": u1 + others + overflowed, "dead_d1": dead}


CAMPAIGNS_CSV = (
    "advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner\n"
    "Acme Corp,cmp-1,1000,100,USD,2026-01-01,2026-12-31,UTC,adnet\n"
)
