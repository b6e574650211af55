"""Intake: a customer's batch of JSON events into Kafka, each event accounted for.

Knows nothing of HTTP (the app and the NDJSON replay both use it). Every event ends in one
of three places: events.raw (within quota), events.overflow (over quota), or events.dlq
with the precise reason and its original bytes. The produce is asynchronous; delivery is
reported by callbacks (counted, failures logged with the event ids), and a caller that asks
can wait for its own events' delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from confluent_kafka import Producer

from eventplatform.collect.metrics import Metrics
from eventplatform.collect.quotas import Quotas
from eventplatform.events import DecodeError, EventCodec, EventValidator
from eventplatform.kafka.dlq import DeadLetter

log = logging.getLogger(__name__)


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, too many events): a 4xx, nothing produced."""


class BufferFull(RuntimeError):
    """The producer's buffer cannot take this batch now: 503, nothing produced."""


@dataclass
class Rejected:
    index: int
    errors: list[str]


@dataclass
class IntakeResult:
    accepted: int = 0
    overflowed: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    delivery: DeliveryWaiter | None = None


class DeliveryWaiter:
    """Counts down a request's messages as the broker acknowledges them."""

    def __init__(self, expected: int) -> None:
        self.pending = expected
        self.failed: list[str] = []
        self._done = threading.Event()
        self._lock = threading.Lock()
        if expected == 0:
            self._done.set()

    def delivered(self, error: str | None) -> None:
        with self._lock:
            if error:
                self.failed.append(error)
            self.pending -= 1
            if self.pending <= 0:
                self._done.set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)


def parse_body(body: bytes, content_type: str, max_events: int) -> list[tuple[Any, bytes | None]]:
    """(event, its bytes) pairs from a JSON array or NDJSON body.

    NDJSON lines are kept as sent. A JSON array's elements come with None: the few that are
    dead-lettered are re-serialized then (same JSON, maybe not the same whitespace). A line
    that is not JSON is an event that fails, not a body that fails.
    """
    text = body.strip()
    if not text:
        raise BodyError("empty body: send a JSON array of events or NDJSON")
    ndjson = "ndjson" in content_type or "x-ndjson" in content_type or not text.startswith(b"[")
    if not ndjson:
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise BodyError("body must be a JSON array of events (or NDJSON)")
        pairs = [(item, None) for item in items]
    else:
        pairs = []
        for line in text.split(b"\n"):
            line = line.strip()
            if not line:
                continue
            try:
                pairs.append((orjson.loads(line), line))
            except orjson.JSONDecodeError as exc:
                pairs.append((_NotJson(str(exc)), line))
    if len(pairs) > max_events:
        raise BodyError(f"{len(pairs)} events in one request; the limit is {max_events}")
    return pairs


@dataclass(frozen=True)
class _NotJson:
    error: str


class Intake:
    def __init__(
        self,
        producer: Producer,
        raw_topic: str,
        overflow_topic: str,
        dlq_topic: str,
        quotas: Quotas,
        metrics: Metrics,
        max_buffered: int,
        source: str = "http",
        max_buffered_bytes: int = 1 << 30,
    ) -> None:
        """``max_buffered`` messages and ``max_buffered_bytes`` of message values may wait
        for the broker; the producer's own limits must sit above these (see
        ``producer_limits``), so that a batch that passed the check is never refused halfway."""
        self.producer = producer
        self.raw_topic, self.overflow_topic, self.dlq_topic = raw_topic, overflow_topic, dlq_topic
        self.quotas, self.metrics = quotas, metrics
        self.max_buffered, self.max_buffered_bytes = max_buffered, max_buffered_bytes
        self.source = source
        self.codec, self.validator = EventCodec(), EventValidator()
        self.delivery_failures = 0
        # Who keeps a message that was not delivered (the collector's journal): it produces
        # it again (True) or keeps it on disk (False), and counts and logs that itself.
        self.keep: Callable[[Any, Any, Callable[[Any, Any], None]], bool] | None = None
        # Room is checked and taken under one lock (requests produce from several threads),
        # and the value bytes waiting for the broker are counted here: librdkafka does not
        # say how many bytes it holds.
        self._room = threading.Lock()
        self._bytes_lock = threading.Lock()
        self.buffered_bytes = 0

    def _delivered(self, err, msg, waiter: DeliveryWaiter | None = None) -> None:
        """Each message's delivery report (served by whoever polls the producer): the produce
        latency when acknowledged, else the failure counted and logged with the event id.
        One bound callback for every message, so nothing is allocated per message for it."""
        if err is not None and self.keep is not None:
            again = self._delivered if waiter is None else partial(self._delivered, waiter=waiter)
            if self.keep(err, msg, again):
                return  # produced again: still in the buffer, and its request still waits
            with self._bytes_lock:
                self.buffered_bytes -= len(msg)
            if waiter is not None:
                waiter.delivered(f"not delivered, kept in the collector's journal: {err}")
            return
        with self._bytes_lock:
            self.buffered_bytes -= len(msg)
        if err is None:
            self.metrics.observe_produce_latency(msg.latency() or 0.0)
        else:
            customer = (msg.key() or b"").decode(errors="replace")
            self.delivery_failures += 1
            self.metrics.inc("collector_delivery_failures_total", customer=customer)
            log.error("delivery failed for %s of %s: %s", self._describe(msg), customer, err)
        if waiter is not None:
            waiter.delivered(str(err) if err else None)

    def _describe(self, msg) -> str:
        if msg.topic() == self.dlq_topic:
            return "a dead letter"
        try:
            return f"event {self.codec.decode(msg.value())['event_id']}"
        except DecodeError:
            return "a message that does not decode"

    def accept(
        self,
        customer: str,
        pairs: list[tuple[Any, bytes | None]],
        quota_checked: int,
        wait: bool = False,
        wait_for_room_s: float = 0.0,
    ) -> IntakeResult:
        """Validate and produce ``pairs``; the first ``quota_checked`` go to raw, others to
        overflow. All of them are produced, or (BufferFull) none: a client told 503 retries
        the whole batch, and must not find part of it already on its way. Waits up to
        ``wait_for_room_s`` for room (a replay waits; an HTTP request answers 503 at once)."""
        if not wait_for_room_s and not self._fits(len(pairs), 0):  # before any work
            raise BufferFull(f"{len(self.producer)} messages waiting for the broker")
        received_ms = int(time.time() * 1000)
        result = IntakeResult()
        messages: list[tuple[str, bytes, Any]] = []  # (topic, value, headers)
        good_index = 0
        for index, (event, raw_bytes) in enumerate(pairs):
            if isinstance(event, _NotJson):
                errors = [f"$: not valid JSON ({event.error})"]
                datum = None
            else:
                datum, field_errors = self.validator.validate(
                    event, customer, received_ms, self.source
                )
                errors = [str(e) for e in field_errors]
            if datum is None:
                result.rejected.append(Rejected(index, errors))
                letter = DeadLetter(
                    "validation",
                    "; ".join(errors),
                    "collect",
                    orjson.dumps(event) if raw_bytes is None else raw_bytes,
                    customer_id=customer,
                    dead_ts=received_ms,
                )
                messages.append((self.dlq_topic, letter.value, letter.headers()))
                continue
            topic = self.raw_topic if good_index < quota_checked else self.overflow_topic
            good_index += 1
            if topic == self.raw_topic:
                result.accepted += 1
            else:
                result.overflowed += 1
            result.event_ids.append(datum["event_id"])
            messages.append((topic, self.codec.encode(datum), None))

        waiter = DeliveryWaiter(len(messages)) if wait else None
        callback = self._delivered if waiter is None else partial(self._delivered, waiter=waiter)
        key = customer.encode()
        produce = self.producer.produce
        size = sum(len(value) for _, value, _ in messages)
        with self._room:
            self._take_room(len(messages), size, wait_for_room_s)
            with self._bytes_lock:
                self.buffered_bytes += size
            for topic, value, headers in messages:
                while True:
                    try:
                        produce(topic, key=key, value=value, headers=headers, on_delivery=callback)
                        break
                    except BufferError:  # not with the producer's limits above ours; never drop
                        log.warning("producer refused a message within the checked room")
                        self.producer.poll(0.05)
        self.producer.poll(0)
        self.metrics.inc("collector_events_accepted_total", result.accepted, customer=customer)
        self.metrics.inc("collector_events_overflowed_total", result.overflowed, customer=customer)
        self.metrics.inc("collector_events_rejected_total", len(result.rejected), customer=customer)
        result.delivery = waiter
        return result

    def _take_room(self, messages: int, size: int, wait_s: float) -> None:
        """Return once ``messages`` of ``size`` bytes fit in the buffer; BufferFull if they do
        not within ``wait_s``. Called under ``_room``: nobody else takes room meanwhile."""
        deadline = time.monotonic() + wait_s
        while not self._fits(messages, size):
            if time.monotonic() >= deadline:
                raise BufferFull(
                    f"{len(self.producer)} messages ({self.buffered_bytes / 2**20:.0f} MiB) "
                    "waiting for the broker"
                )
            self.producer.poll(0.05)

    def _fits(self, messages: int, size: int) -> bool:
        """Room for ``messages`` more of ``size`` bytes (an empty buffer takes any one batch)."""
        queued = len(self.producer)
        return queued + messages <= self.max_buffered and (
            self.buffered_bytes + size <= self.max_buffered_bytes or queued == 0
        )


def producer_limits(max_messages: int, max_bytes: int) -> dict[str, int]:
    """librdkafka's buffer limits, set above the intake's own (which it checks before it
    produces a batch): headroom for keys and headers, which the intake does not count."""
    return {
        "queue.buffering.max.messages": max_messages + 10_000,
        "queue.buffering.max.kbytes": max_bytes // 1024 + max_bytes // 4096 + 16_384,
    }
