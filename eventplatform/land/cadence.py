"""When a micro-batch closes: small and frequent when caught up, large when behind.

What decides is what the consumer sees, not a clock alone. A poll that returns as many
messages as it asked for means more are waiting (librdkafka's prefetch queue is full): the
batch grows, up to ``batch_max_records`` / ``batch_max_bytes``, so a backlog drains in big
batches. A poll that returns fewer, once the batch is ``batch_linger_s`` old, with the lag
behind the batch (from the watermarks the fetches brought: no round trip) under
``batch_max_records``, means the shard is caught up: the batch closes right away, so an event
waits about ``batch_linger_s`` plus the landing of one small batch. The linger keeps a trickle
from becoming one batch (one Parquet file, one ClickHouse part) per message.
``batch_max_wait_s`` stays the upper bound on any batch's age.

A batch's age is its first message's: from the message's Kafka timestamp (set by the
collector's producer when it sent it), not from when this poll picked it up. Messages that
queued while the previous batch was landing have lingered already, so the next batch closes
as soon as it is caught up instead of lingering again (an event then waits about one landing
less). The age is clamped to ``[0, batch_linger_s]``: a producer with a wrong clock can only
make a batch linger as long as it would without timestamps, or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Message

from eventplatform.settings import LandSettings

POLL_MAX = 10_000  # messages one consume() call asks for
IDLE_POLL_S = 0.5  # an empty shard: the caller checks stop and idle this often
SHORT_POLL_S = 0.005  # after the linger: what a caught-up poll waits before the batch closes


@dataclass
class Collected:
    """A batch as collected, and why it closed (``full``, ``caught_up``, ``max_wait``)."""

    messages: list[Message]
    closed_because: str = ""


def collect_batch(
    consumer: Consumer,
    settings: LandSettings,
    lag_behind: Callable[[dict[int, int]], int],
    on_error: Callable[[KafkaError], None],
) -> Collected:
    """Messages up to the batch limits; ``lag_behind(next_offsets)`` is the shard's lag
    behind the collected messages. Empty after ``IDLE_POLL_S`` without a message."""
    s = settings
    batch = Collected([])
    messages = batch.messages
    size = 0
    first: float | None = None
    next_offsets: dict[int, int] = {}

    def take(polled: list[Message]) -> None:
        nonlocal size
        for message in polled:
            if message.error() is not None:
                on_error(message.error())
                continue
            messages.append(message)
            size += len(message.value() or b"")
            next_offsets[message.partition()] = message.offset() + 1

    while True:
        if len(messages) >= s.batch_max_records or size >= s.batch_max_bytes:
            batch.closed_because = "full"
            return batch
        if first is None:
            # poll, not consume: consume waits out its timeout for a full batch, and the first
            # message of a trickle would wait with it.
            one = consumer.poll(IDLE_POLL_S)
            polled, wanted = ([] if one is None else [one]), 1
        else:
            now = time.monotonic()
            left = first + s.batch_max_wait_s - now
            wanted = min(POLL_MAX, s.batch_max_records - len(messages))
            if left <= 0:
                # As old as a batch may get: it takes what is fetched already, without
                # waiting, then closes (not one message a batch when max_wait < linger).
                take(consumer.consume(num_messages=wanted, timeout=0))
                batch.closed_because = "max_wait"
                return batch
            timeout = min(left, max(first + s.batch_linger_s - now, SHORT_POLL_S))
            polled = consumer.consume(num_messages=wanted, timeout=timeout)
        take(polled)
        if not messages:
            return batch  # nothing for IDLE_POLL_S: the caller checks stop and idle
        if first is None:
            first = time.monotonic() - _age_s(messages[0], s.batch_linger_s)
            continue
        if (
            len(polled) < wanted
            and time.monotonic() >= first + s.batch_linger_s
            and lag_behind(next_offsets) < s.batch_max_records
        ):
            batch.closed_because = "caught_up"
            return batch


def _age_s(message: Message, at_most: float) -> float:
    """How long ago the message was produced (its CreateTime), clamped to ``[0, at_most]``;
    0 when it has no timestamp."""
    kind, ms = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or ms <= 0:
        return 0.0
    return min(max(time.time() - ms / 1000, 0.0), at_most)
