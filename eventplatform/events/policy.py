"""What the platform accepts beyond the contract's types: time window and cost cap.

The contract says what an event looks like; the policy says which well-formed events the
platform will land. Both limits protect every other customer, not just the sender:

* ``event_ts`` must lie within a window around the event's ``received_ts``. Without one, a
  customer replaying decades of history (or a device whose clock says 1970) made one landing
  batch touch hundreds of ClickHouse partitions, and the insert failed for the whole shard.
  The window is relative to ``received_ts`` (stamped by the collector), never to the clock of
  whoever lands the batch, so a batch replayed after a crash is judged exactly as before.
* ``cost`` is at least 0 and at most a cap: one event cannot spend a whole budget by mistake
  or on purpose, and a negative cost cannot hide spend.

The collector rejects such events with a field error; the lander, which also reads what
was produced to Kafka without the collector, dead-letters them with the same stable reason.
"""

from __future__ import annotations

from dataclasses import dataclass

MS_PER_DAY = 86_400_000
DEFAULT_MAX_AGE_DAYS = 3 * 366  # a history replay of three years lands as is
DEFAULT_MAX_FUTURE_S = 86_400  # device clocks a day ahead; beyond that the clock is broken
DEFAULT_MAX_EVENT_COST = 10_000.0  # in the campaign's currency

REASON_EVENT_TS = "event_ts_out_of_range"
REASON_COST = "cost_out_of_range"


@dataclass(frozen=True)
class EventPolicy:
    max_age_days: float = DEFAULT_MAX_AGE_DAYS
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    max_event_cost: float = DEFAULT_MAX_EVENT_COST

    @property
    def max_age_ms(self) -> int:
        return int(self.max_age_days * MS_PER_DAY)

    @property
    def max_future_ms(self) -> int:
        return int(self.max_future_s * 1000)

    def event_ts_problem(self, event_ts: int, received_ms: int) -> str | None:
        """None when ``event_ts`` is inside the window around ``received_ms``, else why not."""
        if event_ts < received_ms - self.max_age_ms:
            return (
                f"more than {self.max_age_days:g} days before the event was received "
                f"(EP_EVENTS_MAX_AGE_DAYS); got {event_ts}"
            )
        if event_ts > received_ms + self.max_future_ms:
            return (
                f"more than {self.max_future_s:g} s after the event was received "
                f"(EP_EVENTS_MAX_FUTURE_S; is the device clock right?); got {event_ts}"
            )
        return None

    def cost_problem(self, cost: float) -> str | None:
        if 0 <= cost <= self.max_event_cost:
            return None
        return f"cost must be between 0 and {self.max_event_cost:g} (EP_BUDGETS_MAX_EVENT_COST)"
