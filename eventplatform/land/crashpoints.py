"""Fault injection for the crash tests: a landing process dies at a named point of a batch.

The points, in batch order: ``after_manifest``, ``during_enrichment`` (inside
``eventplatform/enrich/pipeline.py``, between the user-agent and geo lookups and the IP
anonymisation), ``after_decode``, ``after_parquet``, ``after_clickhouse``,
``after_dead_letters``, ``after_commit``. When the shard is behind, the next batch is decoded
while one is in flight, and its manifest comes after its decoding: ``during_enrichment`` and
``after_decode`` then strike with the previous batch's sinks writing. Unset in production.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

CRASH_ENV = "EP_LAND_CRASH_AT"
_suspended = 0


_reached: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here, as ``kill -9`` would, when ``EP_LAND_CRASH_AT`` names this point
    (``name``: the first time the process reaches it; ``name#k``: the k-th time)."""
    wanted = os.environ.get(CRASH_ENV)
    if _suspended or not wanted or wanted.partition("#")[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(wanted.partition("#")[2] or 1):
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
