"""Campaign attribution: the UTM parameters and click ids of the page URL, as columns.

``utm_source``, ``utm_medium``, ``utm_campaign``, ``utm_term``, ``utm_content`` (Google's
campaign URL builder), and the click ids ``gclid`` (Google Ads) and ``fbclid`` (Meta). Each
is read from the query string of ``url`` (the first occurrence; the fragment is not the
query), percent-decoded (``+`` is a space), and cut to ``MAX_CHARS``. A URL without them, or
one that is not a URL, gives nulls. Vectorised: Arrow's RE2 extracts each parameter from the
batch's distinct URLs that have a query string; only the distinct values found are decoded
in Python.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc

VERSION = "utm-1"
PARAMETERS = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "fbclid",
)
MAX_CHARS = 256


def _decode(value: str | None) -> str | None:
    if value is None:
        return None
    text = unquote_plus(value, errors="replace").strip()[:MAX_CHARS]
    return text or None


def parameters(urls: pa.Array) -> dict[str, pa.Array]:
    """Each parameter for each of ``urls`` (distinct values, usually), null where absent."""
    n = len(urls)
    out = {name: pa.nulls(n, pa.string()) for name in PARAMETERS}
    if n == 0:
        return out
    # Only the part before the fragment is the query.
    query = pc.extract_regex(urls, r"^[^?#]*\?(?P<q>[^#]*)").field("q")
    has_query = pc.fill_null(pc.is_valid(query), False)
    if not pc.any(has_query).as_py():
        return out
    padded = pc.binary_join_element_wise("&", query, "")  # every parameter follows an '&'
    padded = pc.binary_join_element_wise("", "&", padded)
    for name in PARAMETERS:
        raw = pc.extract_regex(padded, rf"&{name}=(?P<v>[^&]*)").field("v")
        distinct = pc.unique(raw)
        decoded = pa.array([_decode(v) for v in distinct.to_pylist()], pa.string())
        out[name] = pc.take(decoded, pc.index_in(raw, value_set=distinct))
    return out
