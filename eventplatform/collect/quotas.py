"""Per-customer quotas: token buckets for the normal rate and for the hard cap.

Within the rate, events go to events.raw; over it (but under the hard cap) they go to
events.overflow, landed later at lower priority, so one customer's flood does not delay the
others and nothing is dropped. Over the hard cap the whole request is refused (429 with
Retry-After) before anything is produced.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.updated = burst, clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take_up_to(self, n: int) -> int:
        self._refill()
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted

    def take_all_or_none(self, n: int) -> bool:
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def seconds_until(self, n: int) -> float:
        self._refill()
        return max(0.0, (min(n, self.burst) - self.tokens) / self.rate)


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool  # False: over the hard cap, refuse the request
    to_raw: int  # the first this many events go to events.raw, the rest to overflow
    retry_after_s: int = 0


class Quotas:
    def __init__(
        self, rate: float, burst: float, hard_cap: float, hard_burst: float, clock=time.monotonic
    ) -> None:
        self.rate, self.burst, self.hard_cap, self.hard_burst = rate, burst, hard_cap, hard_burst
        self.clock = clock
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        self._lock = threading.Lock()

    def decide(self, customer_id: str, n: int) -> QuotaDecision:
        with self._lock:
            buckets = self._buckets.get(customer_id)
            if buckets is None:
                buckets = (
                    TokenBucket(self.rate, self.burst, self.clock),
                    TokenBucket(self.hard_cap, self.hard_burst, self.clock),
                )
                self._buckets[customer_id] = buckets
            normal, hard = buckets
            if not hard.take_all_or_none(n):
                return QuotaDecision(False, 0, max(1, math.ceil(hard.seconds_until(n))))
            return QuotaDecision(True, normal.take_up_to(n))
