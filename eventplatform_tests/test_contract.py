"""The event contract: codec round trips, schema evolution, decode errors, JSON validation."""

from __future__ import annotations

import json

import pytest

from eventplatform.events import (
    EVENT_TYPES,
    DecodeError,
    EventCodec,
    EventValidator,
    SchemaRegistry,
    default_registry,
)
from eventplatform.events.codec import MARKER
from eventplatform.events.examples import example_event

RECEIVED_MS = 1795428000123


def contract_event(event_type: str, **envelope) -> dict:
    datum, errors = EventValidator().validate(
        example_event(event_type, **envelope), "cust-a", RECEIVED_MS
    )
    assert errors == []
    return datum


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_event_type_round_trips(event_type: str) -> None:
    codec = EventCodec()
    event = contract_event(event_type, device="mobile")
    encoded = codec.encode(event)
    assert encoded[:2] == MARKER
    assert encoded[2:10] == default_registry().latest.fingerprint
    assert codec.decode(encoded) == event


@pytest.mark.parametrize("writer_version", [1, 2])
def test_compiled_writer_gives_fastavros_bytes(writer_version: int) -> None:
    from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

    codec = EventCodec(writer_version=writer_version)
    assert codec._write is not None  # the contract's types are all compiled
    validator = EventValidator()
    generated = TrafficGenerator(TrafficSpec(seed=3, customers=30)).events(3000, RECEIVED_MS)
    events = [e.event for e in generated] + [example_event(t) for t in sorted(EVENT_TYPES)]
    events += [example_event(t, device="tv", ip="::1", user_agent="é ✓") for t in EVENT_TYPES]
    seen = set()
    for event in events:
        datum, errors = validator.validate(event, "cust-a", RECEIVED_MS)
        assert not errors
        if writer_version == 1:  # v1 lacks envelope.device and page_view.duration_ms
            datum.pop("device")
            datum["payload"].pop("duration_ms", None)
        reference = {**datum, "schema_version": writer_version}
        reference["payload"] = (EVENT_TYPES[datum["event_type"]], datum["payload"])
        assert codec.encode(datum) == codec.encode_with_fastavro(reference)
        seen.add(datum["event_type"])
    assert seen == set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("change", "value"),
    [("event_ts", 2**63), ("event_ts", "soon"), ("event_id", 7), ("device", 1.5)],
)
def test_encoding_an_event_that_does_not_fit_is_a_value_error(change: str, value) -> None:
    event = {**contract_event("click"), change: value}
    with pytest.raises(ValueError, match="does not fit"):
        EventCodec().encode(event)


def test_registry_knows_every_version_by_its_fingerprint() -> None:
    registry = default_registry()
    assert [v.version for v in registry.versions] == [1, 2]
    assert len({v.fingerprint for v in registry.versions}) == 2
    # CRC-64-AVRO of the canonical form, as the Avro specification defines it.
    from fastavro.schema import fingerprint

    for version in registry.versions:
        assert version.fingerprint.hex() == fingerprint(version.canonical_form, "CRC-64-AVRO")


def test_v1_message_is_read_by_v2_reader_with_new_fields_defaulted() -> None:
    v1_writer = EventCodec(writer_version=1)
    event = contract_event("page_view")
    del event["device"]  # v1 has neither envelope.device nor page_view.duration_ms
    del event["payload"]["duration_ms"]
    encoded = v1_writer.encode(event)
    assert encoded[2:10] == default_registry().by_version[1].fingerprint

    decoded = EventCodec().decode(encoded)  # the v2 reader
    assert decoded["schema_version"] == 1
    assert decoded["device"] is None
    assert decoded["payload"]["duration_ms"] is None
    assert decoded["payload"]["url"] == "https://shop.example/p/1"
    assert decoded["event_ts"] == event["event_ts"]


def test_reader_that_knows_only_v1_rejects_v2_by_fingerprint(tmp_path) -> None:
    registry = default_registry()
    old_registry = SchemaRegistry([registry.by_version[1]])
    encoded = EventCodec().encode(contract_event("click"))
    with pytest.raises(DecodeError) as info:
        EventCodec(old_registry).decode(encoded)
    assert info.value.reason == "unknown_schema"
    assert registry.by_version[2].fingerprint.hex() in str(info.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"hello world, not avro", "bad_marker"),
        (b'{"event_type": "click"}', "bad_marker"),
        (MARKER + b"\x01\x02", "truncated"),
        (MARKER + b"\x00" * 8 + b"\x02ab", "unknown_schema"),
    ],
)
def test_garbage_gives_a_clear_decode_error(data, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        EventCodec().decode(data)
    assert info.value.reason == reason
    assert str(info.value).startswith(reason)


def test_truncated_and_padded_bodies_are_decode_errors() -> None:
    codec = EventCodec()
    encoded = codec.encode(contract_event("purchase"))
    for cut in (11, len(encoded) // 2, len(encoded) - 1):
        with pytest.raises(DecodeError) as info:
            codec.decode(encoded[:cut])
        assert info.value.reason in ("truncated", "corrupt_body")
    with pytest.raises(DecodeError) as info:
        codec.decode(encoded + b"\x00\x00")
    assert info.value.reason == "corrupt_body"
    assert "2 trailing bytes" in str(info.value)


def test_payload_that_contradicts_event_type_is_a_decode_error() -> None:
    codec = EventCodec()
    event = contract_event("click")
    event["event_type"] = "page_view"  # a foreign producer could write this
    with pytest.raises(ValueError):
        codec.encode({**event, "event_type": "nonsense"})
    # Encode the click payload under the page_view tag by hand: same fields fit PageView? No:
    # Click has `element`, PageView needs `referrer`; write it as a Click record instead.
    import io

    from fastavro import schemaless_writer

    buf = io.BytesIO()
    buf.write(MARKER + codec.writer.fingerprint)
    datum = {**event, "payload": ("eventplatform.Click", event["payload"])}
    schemaless_writer(buf, codec.writer.wire_schema, datum)
    with pytest.raises(DecodeError) as info:
        codec.decode(buf.getvalue())
    assert "does not match payload eventplatform.Click" in str(info.value)


def test_validation_accepts_a_good_event_and_stamps_the_envelope() -> None:
    datum, errors = EventValidator().validate(
        example_event("impression", event_id="e-1", event_ts=1795428000000), "cust-a", RECEIVED_MS
    )
    assert errors == []
    assert datum["event_id"] == "e-1"
    assert datum["customer_id"] == "cust-a"
    assert datum["received_ts"] == RECEIVED_MS
    assert datum["event_ts"] == 1795428000000
    assert datum["schema_version"] == default_registry().latest.version
    assert datum["payload"]["cost"] == 0.0025


def test_validation_assigns_an_event_id_when_missing() -> None:
    first, _ = EventValidator().validate(example_event("signup"), "c", RECEIVED_MS)
    second, _ = EventValidator().validate(example_event("signup"), "c", RECEIVED_MS)
    assert first["event_id"] and first["event_id"] != second["event_id"]


def test_validation_gives_one_precise_error_per_bad_field() -> None:
    bad = {
        "event_type": "purchase",
        "event_ts": "2026-11-23 10:00:00",  # no time zone
        "customer_id": "someone-else",
        "colour": "red",
        "payload": {"order_id": 7, "amount": "12.5", "items": True, "coupon": "X"},
    }
    datum, errors = EventValidator().validate(bad, "cust-a", RECEIVED_MS)
    assert datum is None
    by_field = {e.field: e.message for e in errors}
    assert by_field == {
        "colour": "unknown field",
        "event_ts": "timestamp needs a time zone (Z or +hh:mm): '2026-11-23 10:00:00'",
        "customer_id": "does not match the API key's customer; omit it or send your own",
        "payload.coupon": "unknown field for eventplatform.Purchase",
        "payload.order_id": "expected string, got integer 7",
        "payload.amount": "expected number, got string '12.5'",
        "payload.currency": "required (string)",
        "payload.items": "expected integer, got boolean True",
    }


@pytest.mark.parametrize(
    ("event", "field", "fragment"),
    [
        ([1, 2], "$", "expected a JSON object, got array"),
        ({"event_ts": 1, "payload": {}}, "event_type", "required"),
        ({"event_type": "tap", "event_ts": 1, "payload": {}}, "event_type", "unknown type 'tap'"),
        ({"event_type": "signup", "payload": {}}, "event_ts", "required"),
        ({"event_type": "signup", "event_ts": True, "payload": {}}, "event_ts", "epoch"),
        ({"event_type": "signup", "event_ts": 1}, "payload", "required"),
        ({"event_type": "signup", "event_ts": 1, "payload": []}, "payload", "expected object"),
        (
            {"event_type": "signup", "event_ts": 1, "payload": {}, "event_id": ""},
            "event_id",
            "1..128",
        ),
        (
            {
                "event_type": "purchase",
                "event_ts": 1,
                "payload": {"order_id": "o", "amount": float("nan"), "currency": "EUR", "items": 1},
            },
            "payload.amount",
            "finite",
        ),
        (
            {
                "event_type": "purchase",
                "event_ts": 1,
                "payload": {"order_id": "o", "amount": 1, "currency": "EUR", "items": 2**40},
            },
            "payload.items",
            "out of range",
        ),
        (
            {"event_type": "signup", "event_ts": 1, "payload": {}, "ip": 127},
            "ip",
            "expected string",
        ),
    ],
)
def test_validation_errors_name_the_field(event, field: str, fragment: str) -> None:
    datum, errors = EventValidator().validate(event, "cust-a", RECEIVED_MS)
    assert datum is None
    matching = [e for e in errors if e.field == field]
    assert matching, errors
    assert fragment in matching[0].message


def test_schemas_in_the_package_are_valid_json_with_docs() -> None:
    for version in default_registry().versions:
        names = [f["name"] for f in version.schema["fields"]]
        assert names[:7] == [
            "event_id",
            "event_type",
            "event_ts",
            "received_ts",
            "customer_id",
            "source",
            "schema_version",
        ]
        json.loads(version.canonical_form)
