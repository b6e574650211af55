"""Customers and their API keys, in a small SQLite file beside the platform's data.

A key is ``ep_<key id>_<secret>``; only the SHA-256 of the secret is stored (the secret is
random, 32 bytes, so a plain hash is enough: there is nothing to guess), and the key is shown
once, when it is made. The customer of a request comes from its key, never from its body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
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
        # The key hashes are for this user only: created 0600 whatever the umask (SQLite
        # gives its -wal and -shm files the database file's mode).
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
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
        """The customer of an active key, or None. One connection per thread, kept: a
        lookup is then a primary-key read, not a file open."""
        match = KEY_FORMAT.fullmatch(api_key)
        if not match:
            return None
        key_id, secret = match.groups()
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=10)
        row = db.execute(
            "SELECT customer_id, secret_hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
            (key_id,),
        ).fetchone()
        if row is None or not hmac.compare_digest(row[1], _hash(secret)):
            return None
        return row[0]


class AuthBusy(RuntimeError):
    """Too many key lookups waiting: an unknown key is answered 503 without one."""


class CachedAuthenticator:
    """Authenticates from memory for ``ttl_s``: the hot path does no SQLite per request.

    A miss is looked up in a thread, never on the event loop (SQLite may wait up to its
    10 s busy timeout for a writer). Keys known to be valid are refreshed on their own
    thread, so a flood of unknown keys queued on the other never delays a customer. Unknown
    keys are remembered (at most ``negative_max``, oldest forgotten first) so that the same
    wrong key costs one lookup per ``ttl_s``, and at most ``max_pending`` lookups wait.
    """

    def __init__(
        self,
        store: CustomerStore,
        ttl_s: float,
        negative_max: int = 10_000,
        max_pending: int = 256,
    ) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.negative_max, self.max_pending = negative_max, max_pending
        self._known: dict[str, tuple[str, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[str | None]] = {}
        self._refresh = ThreadPoolExecutor(1, thread_name_prefix="auth-known")
        self._lookup = ThreadPoolExecutor(1, thread_name_prefix="auth-unknown")
        self.lookups = 0

    @property
    def unknown_cached(self) -> int:
        return len(self._unknown)

    async def __call__(self, api_key: str) -> str | None:
        if not KEY_FORMAT.fullmatch(api_key):
            return None  # malformed: no lookup, nothing remembered
        now = time.monotonic()
        known = self._known.get(api_key)
        if known is not None and now - known[1] < self.ttl_s:
            return known[0]
        seen = self._unknown.get(api_key)
        if seen is not None and now - seen < self.ttl_s:
            return None
        future = self._in_flight.get(api_key)
        if future is None:
            if known is None and len(self._in_flight) >= self.max_pending:
                raise AuthBusy(f"{len(self._in_flight)} key lookups waiting")
            executor = self._refresh if known is not None else self._lookup
            future = asyncio.get_running_loop().run_in_executor(
                executor, self.store.authenticate, api_key
            )
            self._in_flight[api_key] = future
            future.add_done_callback(lambda f: self._looked_up(api_key, f))
        return await asyncio.shield(future)

    def _looked_up(self, api_key: str, future: asyncio.Future[str | None]) -> None:
        self._in_flight.pop(api_key, None)
        self.lookups += 1
        if future.cancelled() or future.exception() is not None:
            return
        customer, now = future.result(), time.monotonic()
        if customer is None:
            self._known.pop(api_key, None)
            self._unknown[api_key] = now
            self._unknown.move_to_end(api_key)
            while len(self._unknown) > self.negative_max:
                self._unknown.popitem(last=False)
        else:
            self._unknown.pop(api_key, None)
            if len(self._known) > 10_000:  # only valid keys get here: a customer's rotations
                self._known.clear()
            self._known[api_key] = (customer, now)

    def close(self) -> None:
        self._refresh.shutdown(wait=False, cancel_futures=True)
        self._lookup.shutdown(wait=False, cancel_futures=True)
