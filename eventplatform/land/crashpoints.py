"""Fault injection for the crash tests: a landing process dies at a named point of a batch.

The points, in batch order: ``after_manifest``, ``during_enrichment`` (inside
``eventplatform/enrich/pipeline.py``, between the user-agent and geo lookups and the IP
anonymisation), ``after_decode``, ``after_parquet``,
``after_clickhouse``, ``after_dead_letters``, ``after_commit``. Unset in production.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

CRASH_ENV = "EP_LAND_CRASH_AT"
_suspended = 0


def crashpoint(name: str) -> None:
    """Die here, as ``kill -9`` would, when ``EP_LAND_CRASH_AT`` names this point."""
    if not _suspended and os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def crashpoints_suspended() -> Iterator[None]:
    """No crash points inside: for code that runs a batch's steps outside of a batch (the
    run's warm-up), where they would kill it before anything is landed."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1
