"""Customers and their API keys, in a small SQLite file beside the platform's data.

A key is ``ep_<key id>_<secret>``; only the SHA-256 of the secret is stored (the secret is
random, 32 bytes, so a plain hash is enough: there is nothing to guess), and the key is shown
once, when it is made. The customer of a request comes from its key, never from its body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

CUSTOMER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
KEY_FORMAT = re.compile(r"ep_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    secret_hash TEXT NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
"""


class CustomerError(ValueError):
    pass


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    customer_id: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class CustomerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add(self, customer_id: str) -> str:
        """Create a customer; returns its first API key (shown once)."""
        if not CUSTOMER_ID.fullmatch(customer_id):
            raise CustomerError(
                f"customer id {customer_id!r} must be 1-63 lowercase letters, digits or '-', "
                "starting with a letter or digit"
            )
        with self._connect() as db:
            try:
                db.execute("INSERT INTO customers VALUES (?, ?)", (customer_id, time.time()))
            except sqlite3.IntegrityError:
                raise CustomerError(f"customer {customer_id} already exists") from None
        return self.new_key(customer_id)

    def new_key(self, customer_id: str) -> str:
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self._connect() as db:
            if not db.execute(
                "SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)
            ).fetchone():
                raise CustomerError(f"no customer {customer_id}")
            db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, NULL)",
                (key_id, customer_id, _hash(secret), time.time()),
            )
        return f"ep_{key_id}_{secret}"

    def revoke(self, key_id: str) -> None:
        with self._connect() as db:
            changed = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            ).rowcount
        if not changed:
            raise CustomerError(f"no active key {key_id}")

    def keys(self, customer_id: str | None = None) -> list[ApiKeyInfo]:
        sql = "SELECT key_id, customer_id, created_at, revoked_at FROM api_keys"
        args: tuple = ()
        if customer_id:
            sql, args = sql + " WHERE customer_id = ?", (customer_id,)
        with self._connect() as db:
            return [ApiKeyInfo(*row) for row in db.execute(sql + " ORDER BY created_at", args)]

    def customers(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT customer_id FROM customers ORDER BY 1")]

    def authenticate(self, api_key: str) -> str | None:
        """The customer of an active key, or None."""
        match = KEY_FORMAT.fullmatch(api_key)
        if not match:
            return None
        key_id, secret = match.groups()
        with self._connect() as db:
            row = db.execute(
                "SELECT customer_id, secret_hash FROM api_keys WHERE key_id = ? "
                "AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[1], _hash(secret)):
            return None
        return row[0]


class CachedAuthenticator:
    """Authenticates from memory for a few seconds: the hot path does no SQLite per request."""

    def __init__(self, store: CustomerStore, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}

    def __call__(self, api_key: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(api_key)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        customer = self.store.authenticate(api_key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[api_key] = (customer, now)
        return customer
