"""Country by IP, from the offline database shipped in the ``iptocc`` package.

``iptocc`` (Rust, MIT/Apache-2.0) bundles the regional internet registries' delegation files
as of its release, so the database's version is the package's version (recorded in each row's
``enrich_version`` and in the batch's metadata); updating it is updating the pin in
pyproject.toml. It knows countries only: no region or city (no offline database on PyPI here
has regions; see docs/enrichment.md), so there is no region column.

Runs on the raw IP, before anonymisation. Private, reserved and invalid addresses have no
country: null, counted.
"""

from __future__ import annotations

from importlib.metadata import version

import iptocc

VERSION = "geo-1"
DATABASE_VERSION = f"iptocc {version('iptocc')}"


def countries(ips: list[str]) -> list[str | None]:
    """ISO 3166-1 alpha-2 code of each address (None when unknown), in one native call."""
    try:
        return iptocc.country_code(ips)
    except Exception:  # one odd string must not cost the batch its countries: one at a time
        out: list[str | None] = []
        for ip in ips:
            try:
                out.append(iptocc.country_code(ip))
            except Exception:
                out.append(None)
        return out
