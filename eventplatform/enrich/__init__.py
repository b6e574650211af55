"""Enrichment: what the landing batch derives from each event before both sinks.

One module per enrichment, each versioned and a function of the event and reference data:
``useragent`` (+ ``bots``), ``geo``, ``ipanon``, ``campaign``, ``referrer``, ``currency``;
``customer_settings`` holds the per-customer settings (IP mode, salt, own domains) and
``pipeline`` runs them all over a batch's columns. No Dagster here (``defs/`` wires it in).
See docs/enrichment.md.
"""

from eventplatform.enrich.pipeline import (
    Enricher,
    Reference,
    enricher_from_settings,
    enrichment_counts,
)

__all__ = ["Enricher", "Reference", "enricher_from_settings", "enrichment_counts"]
