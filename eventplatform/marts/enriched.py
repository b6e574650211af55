"""What the marts read of the enrichment: its columns, and the bots they leave out.

Kept apart from ``build.py`` so the enrichment's part of the marts is in one place. Events
flagged ``is_bot`` (eventplatform/enrich/bots.py) are left out of every mart's input
(``events_raw``, so ``events`` too) unless ``EP_MARTS_INCLUDE_BOTS`` is true. Lake files
landed before enrichment have no enriched columns: they are read with those columns null
(so their events count as people, as they did before).
"""

from __future__ import annotations

ENRICHED_EVENT_COLUMNS = (
    "url",
    "referrer",
    "device_class",
    "is_bot",
    "geo_country",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "referrer_class",
    "amount_reporting",
    "cost_reporting",
    "revenue_reporting",
    "reporting_currency",
)
EMPTY_EVENTS = "_empty_events"  # the landed shape, no rows: registered by the builder


def events_source(parquet_scan: str) -> str:
    """The day's files with every landed column, null where a file predates it."""
    return f"(SELECT * FROM {EMPTY_EVENTS} UNION ALL BY NAME SELECT * FROM {parquet_scan})"


def bot_filter(include_bots: bool, table: str = "") -> str:
    """The WHERE clause of the marts' input (``table``: the alias its columns are read under)."""
    column = f"{table}.is_bot" if table else "is_bot"
    return "" if include_bots else f" WHERE NOT coalesce({column}, false)"
