"""The collector's native fast path (``eventplatform_avro.EventEncoder``) against the
reference, the Python validator and fastavro: for any body, valid or not, the same events
accepted with the same Avro bytes, the same events rejected with the same field errors and
dead letters, the same order; and its messages land in the partition ``produce`` picks."""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid

import orjson
import pytest
from confluent_kafka import TopicPartition
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from eventplatform.collect.intake import Intake, Prepared, is_ndjson, parse_body
from eventplatform.collect.metrics import Metrics
from eventplatform.collect.quotas import Quotas
from eventplatform.events import EventCodec, EventValidator
from eventplatform.events.codec import HEADER_LEN
from eventplatform.events.examples import EXAMPLES, example_event
from eventplatform.events.native import Encoded, NativeEncoder
from eventplatform.events.schemas import EVENT_TYPES
from eventplatform.kafka.clients import make_consumer, make_producer
from eventplatform.kafka.topics import TopicSpec, ensure_topics

RECEIVED = 1795428000000  # 2026-11-23T10:00:00Z
MAX_EVENT_BYTES = 2000  # small, so that some events are too large
BOUNDED = settings(
    max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def intake(native: bool) -> Intake:
    """An intake whose producer is never used: ``prepare`` only validates and encodes."""
    unlimited = float("inf")
    quotas = Quotas(unlimited, unlimited, unlimited, unlimited)
    return Intake(
        None,  # type: ignore[arg-type]
        "raw",
        "overflow",
        "dlq",
        quotas,
        Metrics(),
        1000,
        max_event_bytes=MAX_EVENT_BYTES,
        native=native,
    )


NATIVE, PYTHON = intake(True), intake(False)
CODEC = EventCodec()


def test_the_contract_has_a_native_encoder() -> None:
    assert isinstance(NATIVE.native, NativeEncoder)
    assert PYTHON.native is None


def through_native(body: bytes, content_type: str, quota: int) -> Prepared | None:
    try:
        batch = NATIVE.read(
            "cust", body, False, content_type, 1 << 20, 50, MAX_EVENT_BYTES, received_ms=RECEIVED
        )
    except ValueError:
        return None  # refused before the native path (an empty body): Python's answer
    if not isinstance(batch, Encoded):
        return None
    return NATIVE.prepare("cust", batch, quota)


def through_python(body: bytes, content_type: str, quota: int) -> Prepared | Exception:
    try:
        pairs = parse_body(body, content_type, 50, MAX_EVENT_BYTES)
    except ValueError as exc:  # BodyError, TooLarge: the whole body refused
        return exc
    return PYTHON.prepare("cust", pairs, quota, received_ms=RECEIVED)


def fastavro_bytes(value: bytes) -> bytes:
    """The reference encoding of a message's event: decoded, then written by fastavro."""
    codec = CODEC
    event = codec.decode(value)
    datum = dict(event, payload=(EVENT_TYPES[event["event_type"]], event["payload"]))
    return codec.encode_with_fastavro(datum)


def note(what: str) -> None:
    """What a generated case exercised (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(what)


def assert_same(body: bytes, content_type: str, quota: int, sent: list | None = None) -> None:
    native = through_native(body, content_type, quota)
    python = through_python(body, content_type, quota)
    if native is None:  # left to the Python path whole: it decides, as before
        note("body left to Python")
        return
    note(f"native: {'some' if native.raw or native.overflow else 'no'} good events")
    note(f"native: {'some' if native.dead else 'no'} rejected events")
    assert isinstance(python, Prepared), f"native read a body Python refuses: {python}"
    assert native.result.rejected == python.result.rejected  # same indexes, same errors
    assert native.dead == python.dead  # same dead letters, bytes and headers
    assert (native.result.accepted, native.result.overflowed) == (
        python.result.accepted,
        python.result.overflowed,
    )
    assert native.size == python.size
    goods_n = native.raw + native.overflow
    goods_p = python.raw + python.overflow
    assert len(goods_n) == len(goods_p) == len(native.result.event_ids)
    for mine, theirs, id_n, id_p in zip(
        goods_n, goods_p, native.result.event_ids, python.result.event_ids, strict=True
    ):
        assert mine["key"] == theirs["key"] == b"cust"
        value, reference = mine["value"], theirs["value"]
        if id_n != id_p:  # both generated: a UUID4 each, the rest of the bytes the same
            assert UUID4.fullmatch(id_n) and UUID4.fullmatch(id_p)
            assert value[:HEADER_LEN] == reference[:HEADER_LEN]
            assert value[HEADER_LEN + 37 :] == reference[HEADER_LEN + 37 :]
        else:
            assert value == reference
        assert value == fastavro_bytes(value)


# --- generated bodies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def iso(ms: int, digits: int, offset_min: int) -> str:
    """``ms`` as ISO-8601 with ``digits`` of fraction, in the zone ``offset_min`` east."""
    local = ms + offset_min * 60_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(local // 1000))
    frac = f".{local % 1000:03d}999"[: digits + 1] if digits else ""
    sign, minutes = ("+" if offset_min >= 0 else "-"), abs(offset_min)
    zone = "Z" if offset_min == 0 else f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return stamp + frac + zone


near = st.integers(min_value=RECEIVED - 3 * 366 * 86_400_000, max_value=RECEIVED + 86_400_000)
good_timestamps = near | st.builds(
    iso, near, st.integers(0, 6), st.sampled_from([0, 0, 60, -300, 345, 23 * 60 + 59])
)
timestamps = st.one_of(
    good_timestamps,
    good_timestamps,
    good_timestamps,
    st.integers(min_value=RECEIVED - 4 * 366 * 86_400_000, max_value=RECEIVED + 2 * 86_400_000),
    st.builds(
        lambda y, mo, d, h, mi, s, frac, tz: (
            f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{tz}"
        ),
        st.sampled_from([1969, 1970, 2023, 2024, 2025, 2026, 2027, 2100, 2300, 9999]),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 60),
        st.sampled_from(["", ".1", ".12", ".123", ".123456", ".1234567", ",5", "."]),
        st.sampled_from(
            [
                "Z",
                "+00:00",
                "-00:00",
                "+01:00",
                "-05:30",
                "+23:59",
                "+24:00",
                "",
                "z",
                "+0100",
                "+01:00:00",
                "ZZ",
            ]
        ),
    ),
    st.sampled_from(
        ["2026-11-23T10:15:00Z", "2026-11-23 10:15:00Z", "2026-11-23", "20261123T101500Z"]
    ),
    json_values,
)
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20
) | st.sampled_from(["", "x" * 128, "x" * 129, "é" * 128, "😀" * 129, "a\u0000b", "\u2028"])
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, -0.0, 0.0025, 10_000, 10_000.0, 10_000.000001, 1e-320, 2**53 + 1]),
)


OPTIONAL = ["user_id", "session_id", "ip", "user_agent", "device", "received_ts", "schema_version"]


@st.composite
def events(draw) -> dict:
    event_type = draw(st.sampled_from(sorted(EXAMPLES)))
    if draw(st.booleans()):  # a good event, of any shape a sender may give it
        event = example_event(event_type, event_ts=draw(good_timestamps))
        for name in draw(st.sets(st.sampled_from(["user_id", "session_id", "source"]))):
            del event[name]
        for name, value in draw(
            st.dictionaries(st.sampled_from(OPTIONAL), texts, max_size=3)
        ).items():
            event[name] = value
        if draw(st.booleans()):
            event["event_id"] = draw(st.text(min_size=1, max_size=128))
        return event
    event = example_event(event_type, event_ts=draw(timestamps))
    payload = event["payload"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["envelope", "payload"]))
        target = event if where == "envelope" else payload
        names = [*sorted(target), "event_id", "customer_id", "device", "ip", "unknown", ""]
        name = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["text", "number", "json", "delete", "null"]))
        if kind == "delete":
            target.pop(name, None)
        elif kind == "null":
            target[name] = None
        else:
            value = {"text": texts, "number": numbers, "json": json_values}[kind]
            target[name] = draw(value)
    if draw(st.booleans()):
        event["event_id"] = draw(st.sampled_from(["e-1", "", None, "x" * 129]) | texts)
    if draw(st.integers(0, 9)) == 0:
        event["customer_id"] = draw(st.sampled_from(["cust", "other", None, 7]))
    if draw(st.integers(0, 9)) == 0:
        event["event_type"] = draw(st.sampled_from(["nope", None, 3, "Page_view"]))
    return event


def serialize(event, ascii_only: bool, spaced: bool) -> str:
    """JSON text as senders write it: compact or spaced, UTF-8 or with \\u escapes."""
    separators = None if spaced else (",", ":")
    return json.dumps(event, ensure_ascii=ascii_only, separators=separators)


@BOUNDED
@given(
    batch=st.lists(events(), min_size=1, max_size=8),
    ndjson=st.booleans(),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    quota=st.integers(0, 8),
    broken=st.sampled_from(["", "duplicate", "non-object", "bad-json", "blank-lines", "big"]),
)
def test_native_and_python_paths_agree_on_any_batch(
    batch, ndjson, ascii_only, spaced, quota, broken
) -> None:
    parts = [serialize(e, ascii_only, spaced) for e in batch]
    if broken == "duplicate":  # a key twice: Python keeps the last
        parts[0] = parts[0][:-1] + ',"event_type":"click"}'
    elif broken == "non-object":
        parts.append('["page_view"]')
        parts.append('"page_view"')
    elif broken == "bad-json":
        parts.append('{"event_type": "click", }')
    elif broken == "big":
        parts.append(serialize(example_event("click", user_agent="u" * 3000), False, False))
    if ndjson:
        sep = "\n\n  \t" if broken == "blank-lines" else "\n"
        body, content_type = (sep.join(parts) + "\n").encode(), "application/x-ndjson"
    else:
        body, content_type = ("[" + ", ".join(parts) + "]").encode(), "application/json"
    assert_same(body, content_type, quota)


@BOUNDED
@given(data=st.binary(max_size=200), ndjson=st.booleans())
def test_any_bytes_are_read_as_python_reads_them(data: bytes, ndjson: bool) -> None:
    assert_same(data, "application/x-ndjson" if ndjson else "application/json", 3)
    assert_same(b"[" + data + b"]", "application/json", 3)


def test_common_bodies_are_taken_natively() -> None:
    """The usual batch never reaches Python: every event good, encoded natively."""
    good = [example_event(t, event_ts=RECEIVED - 60_000) for t in sorted(EXAMPLES)]
    good += [example_event(t, event_ts="2026-11-23T09:15:00.125+01:00") for t in sorted(EXAMPLES)]
    for body, content_type in (
        (orjson.dumps(good), "application/json"),
        (b"\n".join(orjson.dumps(e) for e in good), "application/x-ndjson"),
    ):
        assert NATIVE.native is not None
        encoded = NATIVE.native.encode(
            body, is_ndjson(body, content_type), "cust", RECEIVED, "http", 50, MAX_EVENT_BYTES
        )
        assert isinstance(encoded, Encoded)
        assert encoded.python == [] and len(encoded.messages) == len(good)
        assert_same(body, content_type, len(good))


def test_timestamps_parse_to_the_same_milliseconds() -> None:
    """Fractions of 1 to 6 digits and offsets, as Python's float arithmetic gives them."""
    rng = random.Random(7)
    for _ in range(60):
        batch = [
            example_event(
                "page_view",
                event_ts=iso(
                    rng.randrange(RECEIVED - 3 * 365 * 86_400_000, RECEIVED + 86_000_000),
                    rng.choice([0, 1, 2, 3, 4, 5, 6]),
                    rng.choice([0, 345, -660, 23 * 60 + 59, -(23 * 60 + 59)]),
                ),
            )
            for _ in range(50)
        ]
        body = orjson.dumps(batch)
        assert_same(body, "application/json", 50)
        prepared = through_native(body, "application/json", 50)
        assert prepared is not None and len(prepared.raw) > 40  # nearly all in the window


def test_the_bench_traffic_is_taken_natively_with_fastavros_bytes() -> None:
    from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

    generated = [
        e.event for e in TrafficGenerator(TrafficSpec(seed=3, customers=4)).events(500, RECEIVED)
    ]
    body = orjson.dumps(generated)
    assert NATIVE.native is not None
    encoded = NATIVE.native.encode(body, False, "cust", RECEIVED, "http", 1000, 900_000)
    assert encoded is not None and not encoded.python
    validator, codec = EventValidator(), EventCodec()
    for sent, message in zip(copy.deepcopy(generated), encoded.messages, strict=True):
        datum, errors = validator.validate(sent, "cust", RECEIVED)
        assert not errors
        wire = dict(
            datum, schema_version=2, payload=(EVENT_TYPES[datum["event_type"]], datum["payload"])
        )
        assert message["value"] == codec.encode_with_fastavro(wire)


def test_generated_event_ids_are_uuid4s_and_distinct() -> None:
    body = orjson.dumps([example_event("click") for _ in range(200)])
    assert NATIVE.native is not None
    encoded = NATIVE.native.encode(body, False, "cust", RECEIVED, "http", 1000, 900_000)
    assert encoded is not None and len(set(encoded.event_ids)) == 200
    assert all(UUID4.fullmatch(i) and uuid.UUID(i).version == 4 for i in encoded.event_ids)
    codec = EventCodec()
    assert [codec.decode(m["value"])["event_id"] for m in encoded.messages] == encoded.event_ids


def test_too_many_events_and_hostile_nesting_are_left_to_python() -> None:
    assert NATIVE.native is not None
    many = orjson.dumps([example_event("click")] * 51)
    assert NATIVE.native.encode(many, False, "c", RECEIVED, "http", 50, 900_000) is None
    deep = b'[{"event_type":"click","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}]"
    assert NATIVE.native.encode(deep, False, "c", RECEIVED, "http", 50, 900_000) is None


@pytest.mark.timeout(120)
def test_batched_messages_land_in_the_partition_produce_picks(bootstrap: str) -> None:
    """``produce_batch`` partitions by key as ``produce`` does: a customer's events stay
    in one partition of events.raw, whichever call produced them."""
    topic = f"native-partitions-{uuid.uuid4().hex[:8]}"
    from eventplatform.kafka.clients import make_admin

    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 12, 1, {})])
    producer = make_producer(bootstrap)
    unlimited = float("inf")
    intake = Intake(
        producer,
        topic,
        topic,
        topic,
        Quotas(unlimited, unlimited, unlimited, unlimited),
        Metrics(),
        100_000,
    )
    customers = [f"customer-{i}" for i in range(20)]
    body = orjson.dumps([example_event("click", event_ts=int(time.time() * 1000))] * 5)
    for customer in customers:
        batch = intake.read(customer, body, False, "application/json", 1 << 20, 100, 900_000)
        assert isinstance(batch, Encoded)
        assert intake.accept(customer, batch, len(batch)).accepted == 5
        producer.produce(topic, key=customer.encode(), value=b"single")
    assert producer.flush(30) == 0 and intake.delivery_failures == 0
    consumer = make_consumer(bootstrap, f"g-{topic}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(12)])
    partitions: dict[str, set[int]] = {}
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 6 * len(customers) and time.monotonic() < deadline:
        for msg in consumer.consume(500, 1.0):
            assert msg.error() is None
            partitions.setdefault(msg.key().decode(), set()).add(msg.partition())
            seen += 1
    consumer.close()
    assert seen == 6 * len(customers)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len({next(iter(p)) for p in partitions.values()}) > 1  # keys spread over partitions
