"""Referrer class: internal, search, social, email, paid or other.

In order, the first that holds:

1. ``internal``: the referrer's host is one of the customer's own domains (or under one), a
   per-customer setting (``eventplatform enrichment set C --domains shop.example,...``);
2. ``paid``: the page URL carries a click id (``gclid``, ``fbclid``) or a paid
   ``utm_medium`` (cpc, ppc, paid, paidsearch, paid_social, cpm, display, affiliate);
3. ``email``: ``utm_medium`` is email or newsletter, or the host is a webmail (rules below);
4. ``search`` / ``social`` / ``email``: the host matches the rules table ``referrers.csv``
   (in the repository, versioned with this module);
5. ``other``: any other referring host.

No referrer and none of the above: null (direct, or not said). ``referrer_host`` is the
referrer's host, lowercased, without ``www.``; a referrer that is not a URL with a host gives
nulls (counted).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VERSION = "referrer-1"
RULES_FILE = Path(__file__).with_name("referrers.csv")
CLASSES = ("internal", "search", "social", "email", "paid", "other")
PAID_MEDIUMS = ("cpc", "ppc", "paid", "paidsearch", "paid_search", "paid_social", "cpm")
PAID_MEDIUMS += ("display", "affiliate", "cpv")
EMAIL_MEDIUMS = ("email", "e-mail", "newsletter")
_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#@]*@)?(?P<h>\[[0-9A-Fa-f:.]+\]|[^/?#:@\[\]\s]+)"


@functools.cache
def rules() -> tuple[dict[str, str], dict[str, str]]:
    """(exact domain -> class, wildcard label -> class) from ``referrers.csv``."""
    exact, labels = {}, {}
    with open(RULES_FILE) as f:
        lines = [line for line in f if line.strip() and not line.startswith("#")]
    for row in csv.DictReader(lines):
        domain, cls = row["domain"].strip().lower(), row["class"].strip()
        if cls not in ("search", "social", "email"):
            raise ValueError(f"{RULES_FILE.name}: class {cls!r} of {domain} is not a rule class")
        if domain.endswith(".*"):
            labels[domain[:-2]] = cls
        else:
            exact[domain] = cls
    return exact, labels


def host_class(host: str) -> str | None:
    """The rules' class of a host, or None."""
    exact, labels = rules()
    parts = host.split(".")
    for i in range(len(parts)):
        cls = exact.get(".".join(parts[i:]))
        if cls is not None:
            return cls
    for i, label in enumerate(parts):
        if label in labels and 1 <= len(parts) - i - 1 <= 2:
            return labels[label]
    return None


def hosts(referrers: pa.Array) -> pa.Array:
    """The host of each referrer URL (lowercased, without ``www.``), null when it has none."""
    host = pc.utf8_lower(pc.extract_regex(referrers, _HOST).field("h"))
    host = pc.replace_substring_regex(host, r"^www\.", "")
    host = pc.replace_substring_regex(host, r"\.$", "")
    return pc.if_else(pc.equal(pc.utf8_length(host), 0), pa.scalar(None, pa.string()), host)


def is_internal(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def classify(
    host: pa.Array,
    utm_medium: pa.Array,
    click_id: pa.Array,
    internal: list[tuple[np.ndarray, tuple[str, ...]]],
) -> pa.Array:
    """The referrer class of each row; ``internal`` is (rows, own domains) per customer
    setting that names domains."""
    distinct = pc.unique(host)
    hosts_seen = distinct.to_pylist()
    by_rules = pa.array(
        [None if h is None else (host_class(h) or "other") for h in hosts_seen], pa.string()
    )
    cls = pc.take(by_rules, pc.index_in(host, value_set=distinct))
    medium = pc.utf8_lower(utm_medium)
    email = pc.fill_null(pc.is_in(medium, value_set=pa.array(EMAIL_MEDIUMS)), False)
    cls = pc.if_else(email, "email", cls)
    paid = pc.or_(pc.fill_null(pc.is_in(medium, value_set=pa.array(PAID_MEDIUMS)), False), click_id)
    cls = pc.if_else(paid, "paid", cls)
    for rows, domains in internal:
        own = [h for h in hosts_seen if h is not None and is_internal(h, domains)]
        if not own:
            continue
        mask = np.logical_and(
            rows,
            pc.fill_null(pc.is_in(host, value_set=pa.array(own, pa.string())), False).to_numpy(
                zero_copy_only=False
            ),
        )
        cls = pc.if_else(pa.array(mask), "internal", cls)
    return cls
