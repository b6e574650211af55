"""Dagster definitions: the thin layer that wires the domain packages into assets.

`workspace.yaml` loads ``eventplatform.defs:defs``.
"""

from eventplatform.defs.definitions import build_definitions

defs = build_definitions()

__all__ = ["build_definitions", "defs"]
