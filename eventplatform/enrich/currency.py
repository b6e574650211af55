"""Reporting currency: ``amount``, ``cost`` and ``revenue`` also in one currency.

The operator loads dated rates (``eventplatform enrichment rates load FILE.csv``), a CSV of
``date,currency,rate`` where one unit of ``currency`` is ``rate`` units of the reporting
currency (``EP_ENRICH_REPORTING_CURRENCY``, USD) on that date. An event uses the rate of
its currency on the latest date at or before its ``event_ts`` date (rates are published on
working days). Each load is a new immutable file ``rates-<effective_ms>.csv`` that applies to
events received from ``EP_ENRICH_CHANGE_DELAY_S`` after the load, like the customers'
settings: a batch replayed after a load produces the rows it produced before. The file's
own rows are whole: a load replaces the table, it does not merge.

A currency with no rate on or before the day (unknown, misspelt, or earlier than the table)
gives nulls in the reporting columns and a count; it never stops the batch.

Budgets keep their own currency rules (docs/budgets.md): a campaign is spent in its own
currency from the events' ``cost`` as sent, never from these converted columns, so a rate
change never changes a budget's spend or pauses a campaign.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from eventplatform.files import fsync_folder

VERSION = "fx-1"
CURRENCY = re.compile(r"[A-Z]{3}")
_PREFIX, _SUFFIX = "rates-", ".csv"


class RatesError(ValueError):
    pass


@dataclass(frozen=True)
class Rates:
    """One loaded table: per currency, dates (days since the epoch, sorted) and rates."""

    effective_ms: int
    name: str  # the file name: what rows record
    by_currency: dict[str, tuple[list[int], list[float]]]

    def rate(self, currency: str, day: int) -> float | None:
        series = self.by_currency.get(currency)
        if series is None:
            return None
        i = bisect.bisect_right(series[0], day)
        return series[1][i - 1] if i else None


def parse_rates(text: str, reporting_currency: str) -> dict[str, tuple[list[int], list[float]]]:
    """Validate a rates CSV; every problem is an error naming its line (nothing is loaded)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != [
        "date",
        "currency",
        "rate",
    ]:
        raise RatesError("the header must be: date,currency,rate")
    series: dict[str, dict[int, float]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            day = date.fromisoformat((row["date"] or "").strip())
        except ValueError:
            raise RatesError(f"line {line}: date {row['date']!r} is not YYYY-MM-DD") from None
        currency = (row["currency"] or "").strip()
        if not CURRENCY.fullmatch(currency):
            raise RatesError(f"line {line}: currency {currency!r} is not a 3-letter ISO code")
        try:
            rate = float(row["rate"])
        except (TypeError, ValueError):
            raise RatesError(f"line {line}: rate {row['rate']!r} is not a number") from None
        if not math.isfinite(rate) or rate <= 0:
            raise RatesError(f"line {line}: rate {rate} must be a positive number")
        if currency == reporting_currency and rate != 1.0:
            raise RatesError(f"line {line}: {currency} is the reporting currency: its rate is 1")
        days = series.setdefault(currency, {})
        ordinal = (day - date(1970, 1, 1)).days
        if ordinal in days:
            raise RatesError(f"line {line}: a second rate for {currency} on {day}")
        days[ordinal] = rate
    if not series:
        raise RatesError("no rates in the file")
    return {c: (sorted(d), [d[k] for k in sorted(d)]) for c, d in series.items()}


class RatesStore:
    """The loaded tables, one immutable file each, in ``folder``."""

    def __init__(self, folder: Path, reporting_currency: str, change_delay_s: float) -> None:
        self.folder = folder
        self.reporting_currency = reporting_currency
        self.delay_ms = int(change_delay_s * 1000)

    def load(self, text: str) -> Path:
        """Check and store a rates CSV; it applies to events received after the delay."""
        parse_rates(text, self.reporting_currency)
        self.folder.mkdir(parents=True, exist_ok=True)
        effective = int(time.time() * 1000) + self.delay_ms
        existing = self._files()
        if existing:
            effective = max(effective, existing[-1][0] + 1)
        path = self.folder / f"{_PREFIX}{effective}{_SUFFIX}"
        tmp = self.folder / f".tmp-{path.name}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(self.folder)
        return path

    def _files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"{_PREFIX}*{_SUFFIX}"):
            stem = path.name[len(_PREFIX) : -len(_SUFFIX)]
            if stem.isdigit():
                found.append((int(stem), path))
        return sorted(found)

    def tables(self) -> list[Rates]:
        """Every loaded table, oldest first (a file that fails to parse is an error)."""
        return [
            Rates(e, p.name, parse_rates(p.read_text(), self.reporting_currency))
            for e, p in self._files()
        ]


def rates_at(tables: list[Rates], received_ms: np.ndarray) -> np.ndarray:
    """For each event, the index of the table in effect at its received time (-1: none)."""
    starts = np.array([t.effective_ms for t in tables], dtype=np.int64)
    return np.searchsorted(starts, received_ms, side="right") - 1
