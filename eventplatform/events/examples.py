"""One valid JSON event per type: for documentation, the OpenAPI document and tests."""

from __future__ import annotations

import copy
from typing import Any

_AD = {
    "campaign_id": "cmp-42",
    "site_id": "site-7",
    "publisher_id": "pub-3",
    "ad_id": "ad-9",
    "currency": "USD",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "page_view": {
        "url": "https://shop.example/p/1",
        "referrer": "https://search.example/",
        "title": "Blue shoes",
    },
    "click": {"url": "https://shop.example/p/1", "element": "add-to-cart"},
    "signup": {"plan": "pro", "method": "email"},
    "purchase": {"order_id": "o-1001", "amount": 59.9, "currency": "EUR", "items": 2},
    "impression": {**_AD, "pricing_model": "CPM", "cost": 0.0025, "revenue": 0.00175},
    "ad_click": {**_AD, "pricing_model": "CPC", "cost": 0.40, "revenue": 0.28},
    "conversion": {**_AD, "pricing_model": "CPA", "cost": 5.0, "revenue": 3.5, "value": 80.0},
    "bid": {
        "campaign_id": "cmp-42",
        "site_id": "site-7",
        "publisher_id": "pub-3",
        "bid_price": 2.5,
        "won": True,
        "currency": "USD",
    },
}


def example_event(event_type: str, **envelope: Any) -> dict[str, Any]:
    """A JSON event as a customer would send it; ``envelope`` overrides or adds fields."""
    event: dict[str, Any] = {
        "event_type": event_type,
        "event_ts": "2026-11-23T10:15:00Z",
        "user_id": "u-1",
        "session_id": "s-1",
        "source": "web-sdk",
        "payload": copy.deepcopy(EXAMPLES[event_type]),
    }
    event.update(envelope)
    return event
