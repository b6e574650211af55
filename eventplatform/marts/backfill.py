"""What ``eventplatform marts build`` needs from the orchestrator, in the marts' own terms.

The marts know nothing of Dagster, yet a build from the CLI is recorded in the Dagster
instance like a backfill from the UI. The CLI is handed a ``RecordedBackfill`` (the
composition root, ``eventplatform/cli.py``, passes the one in ``defs/``) and reads its
``BackfillRun``: plain values, no orchestrator types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Protocol


@dataclass(frozen=True)
class BuiltPartition:
    day: str  # the partition key, YYYY-MM-DD
    mart: str
    rows: int | None


@dataclass(frozen=True)
class FailedCheck:
    check: str
    mart: str
    description: str


@dataclass(frozen=True)
class BackfillRun:
    """One recorded run that built days ``first..last`` of some marts."""

    run_id: str
    success: bool
    built: list[BuiltPartition] = field(default_factory=list)
    failed_checks: list[FailedCheck] = field(default_factory=list)


class RecordedBackfill(Protocol):
    def __call__(self, first: date, last: date, names: list[str] | None) -> BackfillRun:
        """Build the marts ``names`` (None: all) for days first..last as one recorded run."""
        ...
