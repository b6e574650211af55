"""Intake: a customer's batch of JSON events into Kafka, each event accounted for.

Knows nothing of HTTP (the app and the NDJSON replay both use it). Every event ends in one
of three places: events.raw (within quota), events.overflow (over quota), or events.dlq
with the precise reason and its original bytes. The produce is asynchronous; delivery is
reported by callbacks (counted, failures logged with the event ids), and a caller that asks
can wait for its own events' delivery.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, KafkaException, Producer

from eventplatform.collect.metrics import LATENCY_BUCKETS, Metrics
from eventplatform.collect.quotas import Quotas
from eventplatform.events import (
    DecodeError,
    EventCodec,
    EventPolicy,
    EventValidator,
    dead_letter_reason,
)
from eventplatform.events.native import Encoded, native_encoder
from eventplatform.kafka.dlq import DEFAULT_MAX_VALUE_BYTES, DeadLetter

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
    """Counts down a request's messages as the broker acknowledges them. An HTTP request
    waits on ``future()`` (no thread held for the wait); a replay on ``wait()``."""

    def __init__(self, expected: int) -> None:
        self.pending = expected
        self.failed: list[str] = []
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._future: asyncio.Future[None] | None = None
        if expected == 0:
            self._done.set()

    def delivered(self, error: str | None) -> None:
        with self._lock:
            if error:
                self.failed.append(error)
            self.pending -= 1
            if self.pending <= 0:
                self._done.set()
                future = self._future
                if future is not None:  # delivery callbacks run on the producer's poller
                    future.get_loop().call_soon_threadsafe(_resolve, future)

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def future(self) -> asyncio.Future[None]:
        """Done once every message is acknowledged or failed, on the running loop."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._done.is_set():
                future.set_result(None)
            else:
                self._future = future
        return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TooLarge(BodyError):
    """Over a size limit (bytes as sent or inflated, or events in the body): 413."""


# One NDJSON line with something in it (from its first non-blank byte to its end): found
# and counted by the regex engine, so blank lines cost no Python objects.
_LINE = re.compile(rb"\S[^\n]*")
# A JSON string (escapes included): removed before array elements are counted.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},")
_OPEN, _CLOSE, _COMMA = pa.scalar(1, pa.int8()), pa.scalar(-1, pa.int8()), ord(",")
_ARRAY_START = re.compile(rb"\s*\[")
_INFLATE_CHUNK = 256 * 1024
# A body under this is parsed first and counted after: at most a few 10,000 small objects,
# cheaper than a counting pass over the usual batch.
_COUNT_FIRST_BYTES = 64 * 1024


def count_lines(text: bytes, stop_after: int) -> int:
    """NDJSON events (non-blank lines) in ``text``, counting no further than ``stop_after``."""
    n = 0
    for n, _ in enumerate(_LINE.finditer(text), 1):
        if n > stop_after:
            break
    return n


def count_elements(text: bytes, stop_after: int) -> int:
    """Top-level elements of the JSON array ``text`` (an upper bound, exact when over
    ``stop_after``) without building them: a body of
    millions of ``{}`` would take GiBs and seconds as Python objects. Strings go first (a
    comma in one is not a separator), then the depth of each remaining bracket is a
    cumulative sum (Arrow, in C), and the separators are the commas at depth 1. At most
    ``stop_after`` + 1 is exact; assumes valid JSON (orjson then checks that)."""
    if text.count(b",") < stop_after:  # the usual batch: commas bound the elements
        return min(stop_after, text.count(b",") + 1)
    structure = _STRING.sub(b"0", text).translate(None, _NOT_STRUCTURE)
    commas, depth = 0, 0
    for start in range(0, len(structure), 1 << 20):
        piece = structure[start : start + (1 << 20)]
        codes = pa.Array.from_buffers(pa.uint8(), len(piece), [None, pa.py_buffer(piece)])
        step = pc.if_else(
            pc.is_in(codes, pa.array(b"[{", pa.uint8())),
            _OPEN,
            pc.if_else(
                pc.is_in(codes, pa.array(b"]}", pa.uint8())), _CLOSE, pa.scalar(0, pa.int8())
            ),
        )
        depths = pc.add(pc.cumulative_sum(pc.cast(step, pa.int32())), depth)
        at_top = pc.and_(pc.equal(codes, _COMMA), pc.equal(depths, 1))
        commas += pc.sum(pc.cast(at_top, pa.int32())).as_py() or 0
        depth = depths[-1].as_py()
        if commas >= stop_after:
            break
    empty = structure[:2] == b"[]"
    return 0 if empty else commas + 1


def inflate(body: bytes, max_bytes: int, content_type: str = "", max_events: int = 0) -> bytes:
    """Every member of a gzip body (RFC 1952 allows several; ``cat a.gz b.gz`` makes them),
    inflated a chunk at a time so that a bomb stops at ``max_bytes``, and an NDJSON one
    (with ``max_events``) as soon as it has more lines than that: a 20 KB body of 20 MiB of
    ``{}`` lines is refused after its first chunk, without inflating the rest."""
    out: list[bytes] = []
    size, lines = 0, 0
    tail: list[bytes] = []  # the line not yet ended, counted once its newline comes
    count: bool | None = None if max_events else False  # None: not known before content
    data = body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while True:
        try:
            chunk = inflater.decompress(data, _INFLATE_CHUNK)
        except zlib.error as exc:
            raise BodyError(f"Content-Encoding gzip, but the body is not gzip: {exc}") from None
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"body over {max_bytes} bytes once decompressed")
        if chunk:
            out.append(chunk)
            if count is None and chunk.strip():
                count = is_ndjson(b"".join(out), content_type)
            if count:  # each line counted once, however the chunks cut it
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    tail.append(chunk)
                else:
                    lines += count_lines(b"".join([*tail, chunk[:cut]]), max_events - lines)
                    tail = [chunk[cut + 1 :]]
                    if lines > max_events:
                        raise TooLarge(f"more than {max_events} events in one request")
        data = inflater.unconsumed_tail
        if inflater.eof:
            rest = inflater.unused_data
            if not rest:
                break
            if rest[:2] != b"\x1f\x8b":
                raise BodyError("gzip body has trailing bytes that are not a gzip member")
            inflater, data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
        elif not data and not chunk:
            raise BodyError("gzip body is truncated")
    return b"".join(out)


def is_ndjson(body: bytes, content_type: str) -> bool:
    """NDJSON when it says so, or when the body does not start as a JSON array."""
    return "ndjson" in content_type or _ARRAY_START.match(body) is None


def parse_body(
    body: bytes, content_type: str, max_events: int, max_event_bytes: int = 1 << 30
) -> list[tuple[Any, bytes | None]]:
    """(event, its bytes) pairs from a JSON array or NDJSON body.

    The events are counted before any is built (TooLarge over ``max_events``). NDJSON lines
    are kept as sent; a line over ``max_event_bytes`` is not parsed (an event rejected as
    too large). A JSON array's elements come with None: the few that are dead-lettered are
    re-serialized then (same JSON, maybe not the same whitespace). A line that is not JSON is
    an event that fails, not a body that fails.
    """
    if not body or body.isspace():
        raise BodyError("empty body: send a JSON array of events or NDJSON")
    count_first = len(body) > _COUNT_FIRST_BYTES
    if not is_ndjson(body, content_type):
        if count_first and count_elements(body, max_events) > max_events:
            raise TooLarge(f"more than {max_events} events in one request")
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise BodyError("body must be a JSON array of events (or NDJSON)")
        if len(items) > max_events:
            raise TooLarge(f"{len(items)} events in one request; the limit is {max_events}")
        return [(item, None) for item in items]
    if count_first and count_lines(body, max_events) > max_events:
        raise TooLarge(f"more than {max_events} events in one request")
    pairs: list[tuple[Any, bytes | None]] = []
    for match in _LINE.finditer(body):
        if len(pairs) == max_events:
            raise TooLarge(f"more than {max_events} events in one request")
        line = match.group().rstrip()
        pairs.append((parse_line(line, max_event_bytes), line))
    return pairs


def parse_line(line: bytes, max_event_bytes: int) -> Any:
    """One NDJSON line's event, or what is wrong with it (an event that fails)."""
    if len(line) > max_event_bytes:
        return _NotJson(f"{len(line)} bytes; the limit is {max_event_bytes}", "too large")
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return _NotJson(str(exc))


def read_body(
    body: bytes,
    gzip: bool,
    content_type: str,
    max_decompressed: int,
    max_events: int,
    max_event_bytes: int,
) -> list[tuple[Any, bytes | None]]:
    """A request body as sent into (event, bytes) pairs, every limit enforced as early as it
    can be: the whole of a large or gzip request's work, done off the event loop."""
    if gzip:
        body = inflate(body, max_decompressed, content_type, max_events)
    return parse_body(body, content_type, max_events, max_event_bytes)


class _Produced(Exception):
    """A batch the producer refused in part: the bytes it took, and the refusal."""

    def __init__(self, size: int, error: Exception) -> None:
        super().__init__(str(error))
        self.size, self.error = size, error


# A body's events: (event, bytes as sent) pairs for the Python path, or natively encoded.
Batch = list[tuple[Any, bytes | None]] | Encoded
# Stands for an event the native path took, among the pairs of the events Python checks.
_ENCODED = object()


@dataclass
class Prepared:
    """A batch ready to produce: good messages (``{"value", "key"}``) for raw and for
    overflow, dead letters as (value, headers), their bytes, and the answer's figures."""

    raw: list[dict[str, Any]]
    overflow: list[dict[str, Any]]
    dead: list[tuple[bytes, Any]]
    size: int
    result: IntakeResult


@dataclass(frozen=True)
class _NotJson:
    error: str
    what: str = "not valid JSON"


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
        policy: EventPolicy | None = None,
        max_event_bytes: int = 900_000,
        dlq_max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        native: bool = True,
    ) -> None:
        """``max_buffered`` messages and ``max_buffered_bytes`` of message values may wait
        for the broker; the producer's own limits must sit above these (see
        ``producer_limits``), so that a batch that passed the check is never refused halfway."""
        self.producer = producer
        self.raw_topic, self.overflow_topic, self.dlq_topic = raw_topic, overflow_topic, dlq_topic
        self.quotas, self.metrics = quotas, metrics
        self.max_buffered, self.max_buffered_bytes = max_buffered, max_buffered_bytes
        self.source = source
        self.max_event_bytes, self.dlq_max_value_bytes = max_event_bytes, dlq_max_value_bytes
        self.codec, self.validator = EventCodec(), EventValidator(policy=policy)
        # The fast path (native, one pass from JSON to Avro); None: every event in Python.
        self.native = native_encoder(self.validator, self.codec) if native else None
        self.delivery_failures = 0
        # Who keeps a message that was not delivered (the collector's journal): it produces
        # it again (True) or keeps it on disk (False), and counts and logs that itself.
        self.keep: Callable[[Any, Any, Callable[[Any, Any], None]], bool] | None = None
        # Room is checked and taken under one lock (requests produce from several threads),
        # and the value bytes waiting for the broker are counted here: librdkafka does not
        # say how many bytes it holds. ``_held``: bytes produced less those given back in
        # Python; the tally's acknowledged bytes are the rest (``buffered_bytes``).
        self._room = threading.Lock()
        self._bytes_lock = threading.Lock()
        self._held = 0
        # When a batch's producer last served the delivery reports (``Collector._poll``)
        self.polled_at = 0.0
        # The callback of a request that does not wait: acknowledgements counted natively,
        # failures to ``_delivered`` (a Python call per message cost more than its produce).
        self._tally = delivery_tally(self._delivered)
        if self._tally is not None:
            metrics.add_latency_source(self._tally.latency)

    @property
    def buffered_bytes(self) -> int:
        """Value bytes produced and not yet acknowledged or given back."""
        acknowledged = self._tally.bytes if self._tally is not None else 0
        return self._held - acknowledged

    def _delivered(self, err, msg, waiter: DeliveryWaiter | None = None) -> None:
        """A delivery report (served by whoever polls the producer): the produce latency when
        acknowledged, else the failure kept, or counted and logged with the event id. Every
        report of a request that waits for delivery, and the failures the tally hands on
        (without the native module, every report)."""
        if err is not None and self.keep is not None:
            again = self._delivered if waiter is None else partial(self._delivered, waiter=waiter)
            if self.keep(err, msg, again):
                return  # produced again: still in the buffer, and its request still waits
            with self._bytes_lock:
                self._held -= len(msg)
            if waiter is not None:
                waiter.delivered(f"not delivered, kept in the collector's journal: {err}")
            return
        with self._bytes_lock:
            self._held -= len(msg)
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

    def read(
        self,
        customer: str,
        body: bytes,
        gzip: bool,
        content_type: str,
        max_decompressed: int,
        max_events: int,
        max_event_bytes: int,
        received_ms: int | None = None,
    ) -> Batch:
        """A request body as sent into its events, every limit enforced as early as it can be
        (``read_body``); the usual body's good events already validated and encoded by the
        native fast path (``Encoded``), with ``received_ts`` stamped now (or
        ``received_ms``)."""
        if gzip:
            body = inflate(body, max_decompressed, content_type, max_events)
        # (one limit for a line as sent and an event encoded: the collector's, the same)
        native = self.native is not None and max_event_bytes == self.max_event_bytes
        if native and body and not body.isspace():
            assert self.native is not None
            encoded = self.native.encode(
                body,
                is_ndjson(body, content_type),
                customer,
                int(time.time() * 1000) if received_ms is None else received_ms,
                self.source,
                max_events,
                max_event_bytes,
            )
            if encoded is not None:
                return encoded
        return parse_body(body, content_type, max_events, max_event_bytes)

    def prepare(
        self, customer: str, batch: Batch, quota_checked: int, received_ms: int | None = None
    ) -> Prepared:
        """Each event of ``batch`` validated and encoded, or its dead letter: the first
        ``quota_checked`` good ones for raw, the others for overflow. Events the native path
        took come encoded (stamped when read); the rest go through the Python validator and
        codec here, stamped ``received_ms`` (default now)."""
        if isinstance(batch, Encoded):
            received_ms = batch.received_ms
            if not batch.python:  # the usual batch: every event good, nothing to do here
                good, quota = batch.messages, quota_checked
                result = IntakeResult(event_ids=batch.event_ids)
                result.accepted = min(quota, len(good))
                result.overflowed = len(good) - result.accepted
                return Prepared(good[:quota], good[quota:], [], batch.size, result)
            pairs = self._python_events(batch)
        else:
            received_ms = int(time.time() * 1000) if received_ms is None else received_ms
            pairs = batch
        result = IntakeResult()
        key = customer.encode()
        good: list[dict[str, bytes]] = []
        dead: list[tuple[bytes, Any]] = []  # (value, headers) of the dead letters
        size = 0
        native = iter(
            zip(batch.messages, batch.event_ids, strict=True) if isinstance(batch, Encoded) else ()
        )
        for index, (event, raw_bytes) in enumerate(pairs):
            if event is _ENCODED:  # taken by the native path: its message, in order
                message, event_id = next(native)
                good.append(message)
                size += len(message["value"])
                result.event_ids.append(event_id)
                continue
            if isinstance(event, _NotJson):
                errors = [f"$: {event.what} ({event.error})"]
                datum, reason = None, "validation"
            else:
                datum, field_errors = self.validator.validate(
                    event, customer, received_ms, self.source
                )
                errors = [str(e) for e in field_errors]
                reason = dead_letter_reason(field_errors)
            value = b""
            if datum is not None:
                value = self.codec.encode(datum)
                if len(value) > self.max_event_bytes:  # librdkafka would refuse it mid-batch
                    errors = [
                        f"$: too large ({len(value)} bytes encoded; the limit is "
                        f"{self.max_event_bytes})"
                    ]
                    datum, reason = None, "validation"
            if datum is None:
                result.rejected.append(Rejected(index, errors))
                letter = DeadLetter(
                    reason,
                    "; ".join(errors),
                    "collect",
                    orjson.dumps(event) if raw_bytes is None else raw_bytes,
                    customer_id=customer,
                    dead_ts=received_ms,
                ).truncate(self.dlq_max_value_bytes)
                dead.append((letter.value, letter.headers()))
                size += len(letter.value)
                continue
            good.append({"value": value, "key": key})
            size += len(value)
            result.event_ids.append(datum["event_id"])
        result.accepted = min(quota_checked, len(good))
        result.overflowed = len(good) - result.accepted
        return Prepared(good[:quota_checked], good[quota_checked:], dead, size, result)

    def _python_events(self, batch: Encoded) -> list[tuple[Any, bytes | None]]:
        """(event, bytes) pairs of a natively read batch: ``_ENCODED`` for the events it
        took, the parsed event for the others (an NDJSON line exactly as ``parse_body``
        reads it; an array's element as orjson reads it within the array)."""
        pairs: list[tuple[Any, bytes | None]] = [(_ENCODED, None)] * batch.count
        for index, raw in batch.python:
            if batch.ndjson:
                pairs[index] = (parse_line(raw, batch.max_event_bytes), raw)
            else:
                pairs[index] = (orjson.loads(raw), None)
        return pairs

    def accept(
        self,
        customer: str,
        batch: Batch,
        quota_checked: int,
        wait: bool = False,
        wait_for_room_s: float = 0.0,
    ) -> IntakeResult:
        """Validate and produce ``batch``; the first ``quota_checked`` go to raw, others to
        overflow. All of them are produced, or (BufferFull) none: a client told 503 retries
        the whole batch, and must not find part of it already on its way. Waits up to
        ``wait_for_room_s`` for room (a replay waits; an HTTP request answers 503 at once)."""
        if not wait_for_room_s and not self._fits(len(batch), 0):  # before any work
            raise BufferFull(f"{len(self.producer)} messages waiting for the broker")
        prepared = self.prepare(customer, batch, quota_checked)
        result = prepared.result
        count = len(prepared.raw) + len(prepared.overflow) + len(prepared.dead)
        waiter = DeliveryWaiter(count) if wait else None
        callback: Callable[[Any, Any], None]
        if waiter is not None:
            callback = partial(self._delivered, waiter=waiter)
        else:
            callback = self._tally if self._tally is not None else self._delivered
        with self._room:
            self._take_room(count, prepared.size, wait_for_room_s)
            with self._bytes_lock:
                self._held += prepared.size
            unproduced = prepared.size
            try:
                for topic, messages in (
                    (self.raw_topic, prepared.raw),
                    (self.overflow_topic, prepared.overflow),
                ):
                    if messages:
                        unproduced -= self._produce_batch(topic, messages, callback)
                key = customer.encode()
                for value, headers in prepared.dead:
                    self._produce_one(self.dlq_topic, key, value, headers, callback)
                    unproduced -= len(value)
            except _Produced as partly:  # its refused part was given back already
                unproduced -= sum(len(m["value"]) for m in messages)
                raise partly.error from None
            finally:  # room taken for messages never produced is given back (no leak to 503)
                if unproduced:
                    with self._bytes_lock:
                        self._held -= unproduced
        self.producer.poll(0)
        self.polled_at = time.monotonic()
        self.metrics.inc("collector_events_accepted_total", result.accepted, customer=customer)
        self.metrics.inc("collector_events_overflowed_total", result.overflowed, customer=customer)
        self.metrics.inc("collector_events_rejected_total", len(result.rejected), customer=customer)
        result.delivery = waiter
        return result

    def _produce_batch(self, topic: str, messages: list[dict[str, Any]], callback) -> int:
        """``messages`` to ``topic`` in one call (the key's partition, as ``produce`` picks
        it); one the producer refused for room is produced alone, as ``_produce_one`` does.
        Returns the bytes produced; on another refusal, raises with the bytes not produced
        given back first (the room of the ones produced stays taken until delivered)."""
        size = sum(len(m["value"]) for m in messages)
        if self.producer.produce_batch(topic, messages, on_delivery=callback) == len(messages):
            return size
        failed = None
        for message in messages:
            error = message.pop("_error", None)
            if error is None:
                continue
            if error.code() == KafkaError._QUEUE_FULL and failed is None:
                self._produce_one(topic, message["key"], message["value"], None, callback)
                continue
            failed = failed or error
            size -= len(message["value"])
        if failed is not None:
            with self._bytes_lock:
                self._held -= sum(len(m["value"]) for m in messages) - size
            raise _Produced(size, KafkaException(failed))
        return size

    def _produce_one(self, topic: str, key: bytes, value: bytes, headers: Any, callback) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=callback
                )
                return
            except BufferError:  # not with our limits under the producer's
                log.warning("producer refused a message within the checked room")
                self.producer.poll(0.05)

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


def delivery_tally(on_error: Callable[[Any, Any], None]) -> Any:
    """The native delivery callback (``eventplatform_avro.DeliveryTally``) with ``on_error``
    for the failures, or None without the native module (then ``on_error`` takes every
    report, as it did before the tally)."""
    try:
        from eventplatform_avro import DeliveryTally
    except ImportError:
        return None
    return DeliveryTally(list(LATENCY_BUCKETS), on_error)


def producer_limits(max_messages: int, max_bytes: int) -> dict[str, int]:
    """librdkafka's buffer limits, set above the intake's own (which it checks before it
    produces a batch): headroom for keys and headers, which the intake does not count."""
    return {
        "queue.buffering.max.messages": max_messages + 10_000,
        "queue.buffering.max.kbytes": max_bytes // 1024 + max_bytes // 4096 + 16_384,
    }
