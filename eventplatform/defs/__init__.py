"""Dagster definitions: the thin layer that wires the domain packages into Dagster.

Autoloaded by ``eventplatform/definitions.py`` (one folder per domain: ingest, budgets,
quality, marts; resources in ``resources.py``). Nothing here reads settings at import:
what depends on settings is built inside ``@dg.definitions`` functions, at load time.
"""
