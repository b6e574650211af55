"""What a mart partition reads from the lake, and a fingerprint of it.

A day's inputs are the landed event files of ``events/event_date=D/`` and the dead letters of
``dead_letters/dead_date=D/``. The fingerprint (names, sizes, modification times) is taken
before a build reads the files and recorded with the materialization; when files land later
for that day, the fingerprint changes, and the late-data sensor rebuilds the partition.
Listing folders is cheap (no file is opened), so the sensor can look at every day often.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from eventplatform.land.lake import DEAD_LETTERS_DIR, EVENTS_DIR, current_paths

HISTORY_DAYS_ACTIVE_USERS = 29  # MAU: 30 days ending on the day


def history_days(retention_weeks: int) -> int:
    """Days before D that the history-reading marts look at (MAU, retention lookback)."""
    return max(HISTORY_DAYS_ACTIVE_USERS, 7 * retention_weeks + 6)


def _parquet_files(folder: Path) -> list[Path]:
    """The folder's files a reader reads: not temporaries, nor files a compacted one holds
    (``eventplatform/land/compact.py``), so a day reads each row once during compaction too."""
    return [p for p in current_paths(folder) if p.is_file()]


def event_files(lake_dir: Path, day: date) -> list[Path]:
    return _parquet_files(lake_dir / EVENTS_DIR / f"event_date={day.isoformat()}")


def dead_letter_files(lake_dir: Path, day: date) -> list[Path]:
    return _parquet_files(lake_dir / DEAD_LETTERS_DIR / f"dead_date={day.isoformat()}")


@dataclass(frozen=True)
class DayInputs:
    day: date
    events: tuple[Path, ...]
    dead_letters: tuple[Path, ...]
    fingerprint: str

    @classmethod
    def scan(cls, lake_dir: Path, day: date) -> DayInputs:
        events = tuple(event_files(lake_dir, day))
        dead = tuple(dead_letter_files(lake_dir, day))
        digest = hashlib.sha256()
        for path in (*events, *dead):
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced while listing: the next scan sees it
                continue
            rel = path.relative_to(lake_dir)
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        fingerprint = digest.hexdigest()[:16] if events or dead else "empty"
        return cls(day, events, dead, fingerprint)


def input_days(day: date, reads_history: bool, retention_weeks: int) -> list[date]:
    back = history_days(retention_weeks) if reads_history else 0
    return [day - timedelta(days=n) for n in range(back, -1, -1)]


def combined_fingerprint(days: list[DayInputs]) -> str:
    """One fingerprint for a partition that reads several days."""
    if len(days) == 1:
        return days[0].fingerprint
    digest = hashlib.sha256()
    for d in days:
        digest.update(f"{d.day}:{d.fingerprint}\n".encode())
    return digest.hexdigest()[:16]


class LakeScanner:
    """Scans each day once (the sensor looks at many partitions sharing days)."""

    def __init__(self, lake_dir: Path) -> None:
        self.lake_dir = lake_dir
        self._days: dict[date, DayInputs] = {}

    def day(self, day: date) -> DayInputs:
        if day not in self._days:
            self._days[day] = DayInputs.scan(self.lake_dir, day)
        return self._days[day]

    def fingerprint(self, day: date, reads_history: bool, retention_weeks: int) -> str:
        return combined_fingerprint(
            [self.day(d) for d in input_days(day, reads_history, retention_weeks)]
        )
