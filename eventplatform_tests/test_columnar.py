"""The columnar decoder (native, Rust) agrees with the codec + events_to_arrow path: the same
body columns for good messages, the same error reasons for bad ones, on any bytes."""

from __future__ import annotations

import io
import math
import random
import struct

import pyarrow as pa
import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventplatform.events import (
    EVENT_TYPES,
    DecodeError,
    EventCodec,
    EventValidator,
    SchemaRegistry,
    default_registry,
)
from eventplatform.events.arrow import _body_schema, events_to_arrow
from eventplatform.events.codec import MARKER
from eventplatform.events.columnar import ColumnarDecoder
from eventplatform.events.examples import example_event
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec

NOW_MS = 1795428000123
REASONS = {"empty", "bad_marker", "truncated", "unknown_schema", "corrupt_body"}
BOUNDED = settings(
    max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
INT32_COLUMNS = [f.name for f in _body_schema() if f.type == pa.int32()]

CODEC = EventCodec()
V1 = EventCodec(writer_version=1)
DECODER = ColumnarDecoder()


def as_v1(event: dict) -> dict:
    """An event as a v1 producer has it: no device, no page_view duration."""
    event = {k: v for k, v in event.items() if k != "device"}
    event["payload"] = {k: v for k, v in event["payload"].items() if k != "duration_ms"}
    return event


def encode_mixed(events: list[dict], every_v1: int = 3) -> list[bytes]:
    """Every ``every_v1``-th event by a v1 producer, the rest by the v2 (newest) writer."""
    return [
        V1.encode(as_v1(e)) if i % every_v1 == 0 else CODEC.encode(e) for i, e in enumerate(events)
    ]


def example_events() -> list[dict]:
    validator = EventValidator()
    out = []
    for event_type in sorted(EVENT_TYPES):
        for extra in ({}, {"device": "mobile", "ip": "10.0.0.1", "user_agent": "ua/1"}):
            datum, errors = validator.validate(example_event(event_type, **extra), "cust-a", NOW_MS)
            assert errors == []
            out.append(datum)
    duration = validator.validate(example_event("page_view"), "cust-a", NOW_MS)[0]
    duration["payload"]["duration_ms"] = 12_345
    out.append(duration)
    unicode = validator.validate(
        example_event("click", user_id="ü-∑-😀", session_id=""), "cust-a", NOW_MS
    )[0]
    out.append(unicode)
    return out


def simulated_events(n: int, seed: int = 3) -> list[dict]:
    generator = TrafficGenerator(TrafficSpec(seed=seed, customers=20))
    validator = EventValidator()
    out = []
    for simulated in generator.events(n, NOW_MS):
        datum, errors = validator.validate(simulated.event, simulated.customer_id, NOW_MS)
        if not errors:
            out.append(datum)
    return out


def reference(values: list[bytes | None]) -> pa.Table:
    """The body columns the codec + events_to_arrow path gives (every value must decode)."""
    events = [CODEC.decode(v) for v in values]
    table = events_to_arrow(events, "events.raw", 0, list(range(len(events))), 0)
    return table.select(_body_schema().names)


def codec_verdict(value: bytes | None) -> tuple[str, dict | None]:
    """("ok", event) or (reason, None), as the codec + events_to_arrow path sees a message.

    An int field outside the 32-bit range decodes in fastavro (Python ints are unbounded) but
    cannot become an int32 column (events_to_arrow raises): the columnar decoder reports it as
    corrupt_body, and so does this verdict.
    """
    try:
        event = CODEC.decode(value)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return exc.reason, None
    flat = {**event, **event["payload"]}
    for name in INT32_COLUMNS:
        if flat.get(name) is not None and not -(2**31) <= flat[name] < 2**31:
            return "corrupt_body", None
    return "ok", event


def same_rows(table: pa.Table, events: list[dict]) -> None:
    """Row by row equality with the reference, NaN equal to NaN (bit flips make NaNs)."""
    expected = events_to_arrow(events, "t", 0, list(range(len(events))), 0)
    expected = expected.select(_body_schema().names)
    assert table.schema == _body_schema()
    assert table.num_rows == len(events)

    def norm(row: dict) -> dict:
        return {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    def rows(t: pa.Table) -> list[dict]:
        # timestamps as epoch ms: a mangled varint can lie outside Python's datetime range
        plain = pa.schema(
            [f.with_type(pa.int64()) if pa.types.is_timestamp(f.type) else f for f in t.schema]
        )
        return [norm(r) for r in t.cast(plain).to_pylist()]

    assert rows(table) == rows(expected)


# -- good messages ---------------------------------------------------------------------------


def test_every_event_type_v1_and_v2_gives_the_reference_table() -> None:
    events = example_events()
    for every_v1 in (1, 2, 10**9):  # all v1, alternating, all v2
        values = encode_mixed(events, every_v1)
        table, errors = DECODER.decode(values)
        assert errors == []
        assert table.schema == _body_schema()
        assert table.equals(reference(values))


def test_simulated_traffic_mixed_writers_gives_the_reference_table() -> None:
    values = encode_mixed(simulated_events(5_000))
    assert len(values) > 4_000
    table, errors = DECODER.decode(values)
    assert errors == []
    assert table.equals(reference(values))
    # v1 messages read into the v2 columns: the v2-only fields are null
    first = table.slice(0, 1).to_pylist()[0]
    assert first["schema_version"] == 1 and first["device"] is None
    assert table.column("event_ts").type == pa.timestamp("ms", tz="UTC")


def test_empty_batch_and_only_bad_messages_give_empty_tables() -> None:
    table, errors = DECODER.decode([])
    assert table.num_rows == 0 and errors == [] and table.schema == _body_schema()
    table, errors = DECODER.decode([None, b""])
    assert table.num_rows == 0 and [i for i, _ in errors] == [0, 1]


def test_bytes_like_values_are_accepted_and_other_objects_are_errors() -> None:
    values = encode_mixed(example_events()[:4])
    table, errors = DECODER.decode([bytearray(values[0]), memoryview(values[1]), *values[2:]])
    assert errors == []
    assert table.equals(reference(values))
    table, errors = DECODER.decode([values[0], "text", 7, "", values[1]])  # type: ignore[list-item]
    assert table.equals(reference([values[0], values[1]]))
    assert [(i, e.reason) for i, e in errors] == [
        (1, "bad_marker"),
        (2, "bad_marker"),
        (3, "empty"),
    ]


def test_a_batch_past_the_string_limit_becomes_several_chunks() -> None:
    values = encode_mixed(simulated_events(400, seed=5))
    values.insert(100, b"garbage")
    small = ColumnarDecoder(max_string_bytes=2_000)  # some dozens of events per chunk
    table, errors = small.decode(values)
    assert [(i, e.reason) for i, e in errors] == [(100, "bad_marker")]
    assert table.column("event_id").num_chunks > 3
    del values[100]
    assert table.equals(reference(values))
    assert table.combine_chunks().equals(DECODER.decode(values)[0])


def test_threads_decode_at_the_same_time() -> None:
    # the native decoder runs without the GIL: one decoder, several threads, the same results
    from concurrent.futures import ThreadPoolExecutor

    values = encode_mixed(simulated_events(3_000, seed=9))
    expected = reference(values)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(DECODER.decode, [values] * 8))
    assert all(t.equals(expected) and e == [] for t, e in results)


# -- errors ----------------------------------------------------------------------------------


def purchase_body() -> bytes:
    event = EventValidator().validate(example_event("purchase"), "cust-a", NOW_MS)[0]
    return CODEC.encode(event)


def with_raw_datum(mutate) -> bytes:
    """A v2 message written by fastavro from a hand-made datum (``mutate`` edits it)."""
    event = EventValidator().validate(example_event("click"), "cust-a", NOW_MS)[0]
    datum = {**event, "payload": ("eventplatform.Click", event["payload"])}
    mutate(datum)
    buf = io.BytesIO()
    buf.write(MARKER + CODEC.writer.fingerprint)
    schemaless_writer(buf, CODEC.writer.wire_schema, datum)
    return buf.getvalue()


def bad_messages() -> dict[str, bytes | None]:
    good = purchase_body()
    fp = CODEC.writer.fingerprint
    user_id_at = good.index(b"\x02\x06u-1")  # the union index of user_id, then "u-1"
    return {
        "none": None,
        "empty": b"",
        "not_avro": b"hello world, not avro",
        "json": b'{"event_type": "click"}',
        "one_byte": b"\xc3",
        "short_header": MARKER + b"\x01\x02",
        "unknown_fingerprint": MARKER + b"\x00" * 8 + b"\x02ab",
        "header_only": MARKER + fp,
        "cut_in_half": good[: len(good) // 2],
        "cut_last_byte": good[:-1],
        "cut_after_first_byte": good[:11],
        "trailing_bytes": good + b"\x00\x00",
        "varint_runs_off_the_end": MARKER + fp + b"\x80",
        "negative_string_length": MARKER + fp + b"\x01" + good[11:],
        "union_index_out_of_range": good[:user_id_at] + b"\x04" + good[user_id_at + 1 :],
        "union_index_negative_out_of_range": good[:user_id_at] + b"\x05" + good[user_id_at + 1 :],
        "invalid_utf8": good[:user_id_at] + b"\x02\x06u-\xff" + good[user_id_at + 5 :],
        "event_type_contradicts_payload": with_raw_datum(
            lambda d: d.update(event_type="page_view")
        ),
        "unknown_event_type": with_raw_datum(lambda d: d.update(event_type="tap")),
    }


# Header errors, trailing bytes and a contradicting event_type are worded as the codec words
# them; body errors (which fastavro words as Python exceptions) say where and what instead.
EXACT_DETAIL = {
    "none",
    "empty",
    "not_avro",
    "json",
    "one_byte",
    "short_header",
    "unknown_fingerprint",
    "trailing_bytes",
    "event_type_contradicts_payload",
    "unknown_event_type",
}


@pytest.mark.parametrize("name", sorted(bad_messages()))
def test_each_bad_message_gives_the_codecs_reason(name: str) -> None:
    value = bad_messages()[name]
    with pytest.raises(DecodeError) as info:
        CODEC.decode(value)
    good = purchase_body()
    table, errors = DECODER.decode([good, value, good])
    assert table.num_rows == 2
    assert [i for i, _ in errors] == [1]
    error = errors[0][1]
    assert isinstance(error, DecodeError)
    assert error.reason == info.value.reason, (error, info.value)
    assert error.detail and str(error).startswith(error.reason)
    if name in EXACT_DETAIL:
        assert error.detail == info.value.detail  # worded exactly as the codec words it


def test_a_panic_while_decoding_becomes_corrupt_body() -> None:
    # A panic is a bug and no input is known to cause one; the guard around each message's
    # decoding (the one the batch loop uses) turns it into that message's corrupt_body.
    import eventplatform_avro

    assert eventplatform_avro._panic_probe() == "the decoder panicked on this message"


def test_negative_union_index_reads_like_fastavro() -> None:
    # fastavro indexes the branch list as Python does: -1 is the last branch ("string")
    good = purchase_body()
    at = good.index(b"\x02\x06u-1")
    value = good[:at] + b"\x01" + good[at + 1 :]
    assert CODEC.decode(value)["user_id"] == "u-1"
    table, errors = DECODER.decode([value])
    assert errors == [] and table.column("user_id").to_pylist() == ["u-1"]


def test_int_outside_32_bits_is_corrupt_not_a_crash() -> None:
    # fastavro reads it (Python int) and events_to_arrow would then raise on the int32 column;
    # the columnar decoder sends it to the dead letters instead.
    good = purchase_body()
    assert good[-1] == 4  # items = 2, the last field
    value = good[:-1] + b"\x80\x80\x80\x80\x80\x80\x01"
    assert CODEC.decode(value)["payload"]["items"] == 2**41
    assert codec_verdict(value)[0] == "corrupt_body"
    table, errors = DECODER.decode([value])
    assert table.num_rows == 0
    assert errors[0][1].reason == "corrupt_body" and "items" in errors[0][1].detail


def test_long_varints_wrap_like_fastavro() -> None:
    # More than ten varint bytes: fastavro's C shift wraps; the native decoder does the same.
    good = purchase_body()
    ts_at = good.index(b"\x10purchase") + 9  # event_ts follows the event_type
    for varint in (b"\xff" * 12 + b"\x01", b"\x81" + b"\x80" * 9 + b"\x01", b"\x80" * 18 + b"\x05"):
        end = ts_at
        while good[end] & 0x80:
            end += 1
        value = good[:ts_at] + varint + good[end + 1 :]
        verdict, event = codec_verdict(value)
        table, errors = DECODER.decode([value])
        assert verdict == "ok" and errors == []
        same_rows(table, [event])


def test_a_reader_that_knows_only_v1_rejects_v2_by_fingerprint() -> None:
    registry = default_registry()
    old = ColumnarDecoder(SchemaRegistry([registry.by_version[1]]))
    v2 = purchase_body()
    v1 = V1.encode(as_v1(EventValidator().validate(example_event("bid"), "c", NOW_MS)[0]))
    table, errors = old.decode([v2, v1])
    assert table.num_rows == 1 and table.column("bid_price").to_pylist() == [2.5]
    assert [(i, e.reason) for i, e in errors] == [(0, "unknown_schema")]
    assert registry.by_version[2].fingerprint.hex() in e_detail(errors)


def e_detail(errors: list[tuple[int, DecodeError]]) -> str:
    return " ".join(e.detail for _, e in errors)


def test_bad_messages_among_good_ones_keep_order_and_indexes() -> None:
    rng = random.Random(7)
    good = encode_mixed(simulated_events(600, seed=11))
    bad = list(bad_messages().values())
    values: list[bytes | None] = []
    for g in good:
        values.append(g)
        if rng.random() < 0.2:
            values.append(rng.choice(bad))
    verdicts = [codec_verdict(v) for v in values]
    table, errors = DECODER.decode(values)
    assert [(i, e.reason) for i, e in errors] == [
        (i, reason) for i, (reason, _) in enumerate(verdicts) if reason != "ok"
    ]
    assert table.equals(
        reference([v for v, (r, _) in zip(values, verdicts, strict=True) if r == "ok"])
    )


# -- fuzz ------------------------------------------------------------------------------------

SEEDS = encode_mixed(example_events(), every_v1=2)


def check_against_codec(values: list[bytes | None]) -> None:
    """Any bytes: only DecodeErrors; the same good messages, reasons and rows as the codec."""
    table, errors = DECODER.decode(values)
    assert all(isinstance(e, DecodeError) and e.reason in REASONS for _, e in errors)
    verdicts = [codec_verdict(v) for v in values]
    assert [(i, e.reason) for i, e in errors] == [
        (i, reason) for i, (reason, _) in enumerate(verdicts) if reason != "ok"
    ]
    same_rows(table, [event for reason, event in verdicts if reason == "ok"])


@BOUNDED
@given(data=st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_random_bytes(data: list[bytes]) -> None:
    fps = [v.fingerprint for v in default_registry().versions]
    values: list[bytes | None] = []
    for i, d in enumerate(data):
        values.append(d)
        values.append(MARKER + fps[i % len(fps)] + d)
    check_against_codec(values)


mutation = st.tuples(
    st.sampled_from(range(len(SEEDS))),
    st.sampled_from(["cut", "flip", "flips", "byte", "insert", "delete"]),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=255),
)


def mutate(seed: int, kind: str, at: int, byte: int) -> bytes:
    value = bytearray(SEEDS[seed])
    at = at % (len(value) + 1)
    if kind == "cut":
        return bytes(value[:at])
    at = min(at, len(value) - 1)
    if kind == "flip":
        value[at] ^= 1 << (byte % 8)
    elif kind == "flips":
        rng = random.Random(at * 256 + byte)
        for _ in range(3):
            value[rng.randrange(10, len(value))] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        value[at] = byte
    elif kind == "insert":
        value.insert(at, byte)
    else:
        del value[at]
    return bytes(value)


@BOUNDED
@given(mutations=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_truncated_and_bit_flipped_messages(mutations) -> None:
    values = [mutate(*m) for m in mutations]
    check_against_codec([*values, SEEDS[0]])


@BOUNDED
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    at=st.integers(min_value=10, max_value=10**6),
    value=st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(
            lambda n: _varint((n << 1) ^ (n >> 63))
        ),
        st.floats(width=64).map(lambda f: struct.pack("<d", f)),
    ),
)
def test_fuzz_spliced_values(seed: int, at: int, value: bytes) -> None:
    """Replace bytes by a well-formed varint or double: more paths that decode."""
    original = SEEDS[seed]
    at = 10 + (at - 10) % (len(original) - 10)
    check_against_codec([original[:at] + value + original[at + len(value) :]])


def _varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7
