"""Per-customer enrichment settings: IP mode, salt and own domains, in customers.sqlite.

Kept as history, never updated in place: each change is a new row that takes effect
``change_delay_s`` after it was made (``effective_ms``). An event is enriched with the row of
its customer in effect at its ``received_ts`` (the collector's clock), so the same event gets
the same setting however late or how often its batch is landed: a batch replayed after a
crash, after the setting changed, produces the same rows. The lander caches what it read and
reads again only when a batch has an event received later than its copy is known to cover
(read time + delay, less a margin for a commit in flight): see :meth:`SettingsHistory.covers`.

The salt is a secret: it is in this file only (0600, the collector's key store), is never
printed (``CustomerSettings.public()`` leaves it out, ``repr`` hides it), and is never in a
row or metadata. A customer's settings are shown only by customer id, by the operator's CLI.
"""

from __future__ import annotations

import bisect
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from eventplatform.enrich.ipanon import DEFAULT_MODE, MODES

SCHEMA = """
CREATE TABLE IF NOT EXISTS enrichment_settings (
    customer_id      TEXT NOT NULL,
    effective_ms     INTEGER NOT NULL,
    ip_mode          TEXT NOT NULL,
    internal_domains TEXT NOT NULL,
    salt             BLOB NOT NULL,
    PRIMARY KEY (customer_id, effective_ms)
);
"""
DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
MAX_DOMAINS = 100
COMMIT_MARGIN_MS = 5_000  # a change committed this long after its clock was read still counts


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class CustomerSettings:
    customer_id: str
    effective_ms: int  # 0: the defaults (no row)
    ip_mode: str = DEFAULT_MODE
    internal_domains: tuple[str, ...] = ()
    salt: bytes = field(default=b"", repr=False)

    def public(self) -> dict[str, object]:
        """What may be shown to the operator (never the salt)."""
        return {
            "customer_id": self.customer_id,
            "ip_mode": self.ip_mode,
            "internal_domains": list(self.internal_domains),
            "effective_ms": self.effective_ms,
            "salt": "set" if self.salt else "none",
        }


def defaults(customer_id: str) -> CustomerSettings:
    return CustomerSettings(customer_id, 0)


class SettingsHistory:
    """Every customer's settings rows as read at ``read_ms``: which row is in effect when."""

    def __init__(self, rows: list[CustomerSettings], read_ms: int, delay_ms: int) -> None:
        self.read_ms, self.delay_ms = read_ms, delay_ms
        self._by_customer: dict[str, list[CustomerSettings]] = {}
        for row in sorted(rows, key=lambda r: (r.customer_id, r.effective_ms)):
            self._by_customer.setdefault(row.customer_id, []).append(row)
        self._starts = {c: [r.effective_ms for r in rs] for c, rs in self._by_customer.items()}

    def covers(self, received_ms: int) -> bool:
        """Whether every change that can apply to an event received at ``received_ms`` is in
        this copy: a change made after ``read_ms`` takes effect after ``read_ms + delay``."""
        return received_ms < self.read_ms + self.delay_ms - COMMIT_MARGIN_MS

    def customers(self) -> list[str]:
        return list(self._by_customer)

    def versions(self, customer_id: str) -> list[CustomerSettings]:
        return self._by_customer.get(customer_id, [])

    def at(self, customer_id: str, received_ms: int) -> CustomerSettings:
        rows = self._by_customer.get(customer_id)
        if not rows:
            return defaults(customer_id)
        i = bisect.bisect_right(self._starts[customer_id], received_ms)
        return rows[i - 1] if i else defaults(customer_id)


class SettingsStore:
    """The ``enrichment_settings`` table of customers.sqlite."""

    def __init__(self, path: Path, change_delay_s: float) -> None:
        self.path = path
        self.delay_ms = int(change_delay_s * 1000)

    def _connect(self, write: bool) -> sqlite3.Connection | None:
        if not write:
            if not self.path.exists():
                return None
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # as the key store
        db = sqlite3.connect(self.path, timeout=10)
        db.executescript(SCHEMA)
        return db

    def history(self) -> SettingsHistory:
        """Every row, read now (the lander's cached copy)."""
        read_ms = int(time.time() * 1000)
        db = self._connect(write=False)
        rows: list[CustomerSettings] = []
        if db is not None:
            try:
                has_table = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'enrichment_settings'"
                ).fetchone()
                if has_table:
                    rows = [
                        CustomerSettings(c, e, m, tuple(d.split(",")) if d else (), s)
                        for c, e, m, d, s in db.execute(
                            "SELECT customer_id, effective_ms, ip_mode, internal_domains, salt "
                            "FROM enrichment_settings"
                        )
                    ]
            finally:
                db.close()
        return SettingsHistory(rows, read_ms, self.delay_ms)

    def current(self, customer_id: str) -> CustomerSettings:
        """The newest setting of a customer (in effect now or soon)."""
        rows = self.history().versions(customer_id)
        return rows[-1] if rows else defaults(customer_id)

    def set(
        self,
        customer_id: str,
        *,
        ip_mode: str | None = None,
        internal_domains: list[str] | None = None,
        rotate_salt: bool = False,
    ) -> CustomerSettings:
        """A new row from the newest one with the changes; in effect after the delay."""
        if ip_mode is not None and ip_mode not in MODES:
            raise SettingsError(f"ip mode must be one of {', '.join(MODES)}; got {ip_mode!r}")
        domains = None
        if internal_domains is not None:
            domains = tuple(sorted({d.strip().lower().rstrip(".") for d in internal_domains}))
            domains = tuple(d for d in domains if d)
            bad = [d for d in domains if not DOMAIN.fullmatch(d)]
            if bad:
                raise SettingsError(f"not a domain name: {', '.join(bad[:5])}")
            if len(domains) > MAX_DOMAINS:
                raise SettingsError(f"at most {MAX_DOMAINS} domains, got {len(domains)}")
        db = self._connect(write=True)
        assert db is not None
        try:
            with db:
                known = (
                    db.execute("SELECT 1 FROM sqlite_master WHERE name = 'customers'").fetchone()
                    and db.execute(
                        "SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)
                    ).fetchone()
                )
                if not known:
                    raise SettingsError(f"no customer {customer_id}")
                last = db.execute(
                    "SELECT effective_ms, ip_mode, internal_domains, salt FROM "
                    "enrichment_settings WHERE customer_id = ? ORDER BY effective_ms DESC "
                    "LIMIT 1",
                    (customer_id,),
                ).fetchone()
                now = int(time.time() * 1000)
                effective = now + self.delay_ms
                if last is not None:
                    effective = max(effective, last[0] + 1)
                mode = ip_mode or (last[1] if last else DEFAULT_MODE)
                stored = ",".join(domains) if domains is not None else (last[2] if last else "")
                salt = last[3] if last and not rotate_salt else secrets.token_bytes(32)
                db.execute(
                    "INSERT INTO enrichment_settings VALUES (?, ?, ?, ?, ?)",
                    (customer_id, effective, mode, stored, salt),
                )
        finally:
            db.close()
        return CustomerSettings(
            customer_id, effective, mode, tuple(stored.split(",")) if stored else (), salt
        )
