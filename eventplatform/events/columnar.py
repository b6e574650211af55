"""Columnar decoding: a batch of Kafka messages straight to the landed body columns.

:class:`ColumnarDecoder` does what ``[codec.decode(v) for v in values]`` followed by
``events_to_arrow`` does for the body columns (``_body_schema()``: the envelope, then every
payload field flattened by name), without a Python object per event: the native extension
``eventplatform_avro`` (Rust, ``native/avro_columnar``) decodes the Avro bodies into Arrow
buffers, which are wrapped here without copying. Good messages and error reasons are the same
as :class:`~eventplatform.events.codec.EventCodec`'s.
"""

from __future__ import annotations

import json

import pyarrow as pa
from eventplatform_avro import Decoder

from eventplatform.events.arrow import _body_schema
from eventplatform.events.codec import DecodeError, EventCodec
from eventplatform.events.schemas import RECORD_TO_EVENT_TYPE, SchemaRegistry, default_registry

# Arrow type of a body column -> (the native column type, the type its buffers are read as)
_NATIVE_TYPES: dict[pa.DataType, str] = {
    pa.string(): "string",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.bool_(): "bool",
}


def _native_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "int64"  # epoch values, the same buffers
    try:
        return _NATIVE_TYPES[arrow_type]
    except KeyError:
        raise TypeError(f"no columnar decoding for Arrow type {arrow_type}") from None


class ColumnarDecoder:
    """Decodes lists of single-object encoded events into the landed body columns.

    Every known writer schema (by fingerprint) is read with its own layout and its fields
    mapped by name into the newest schema's columns, so a v1 message has the v2-only
    fields null, as the codec's schema resolution gives.
    """

    def __init__(
        self, registry: SchemaRegistry | None = None, *, max_string_bytes: int = 2**31 - 1
    ) -> None:
        """``max_string_bytes``: a string column chunk stays below it (Arrow ``string`` has
        32-bit offsets); a batch past it becomes a table of several chunks. Smaller in tests."""
        self.registry = registry or default_registry()
        self.schema = _body_schema()
        self._codec = EventCodec(self.registry)  # words the header errors exactly as it does
        self._native = Decoder(
            [(v.fingerprint, json.loads(v.canonical_form)) for v in self.registry.versions],
            [(f.name, _native_type(f.type)) for f in self.schema],
            "event_type",
            dict(RECORD_TO_EVENT_TYPE),
            max_string_bytes,
        )

    def decode(self, values: list[bytes | None]) -> tuple[pa.Table, list[tuple[int, DecodeError]]]:
        """Body columns (_body_schema()) for the messages that decode, in order; and
        (index, DecodeError) for each that does not."""
        if not isinstance(values, list):
            values = list(values)
        batches: list[pa.RecordBatch] = []
        errors: list[tuple[int, DecodeError]] = []
        start = 0
        while True:
            start_next, rows, columns, raw_errors = self._native.decode(values, start)
            batches.append(self._batch(rows, columns))
            errors.extend((i, self._error(values[i], *rest)) for i, *rest in raw_errors)
            if start_next >= len(values):
                break
            assert start_next > start, "the native decoder made no progress"
            start = start_next  # a string column reached 2 GiB: go on in a new chunk
        return pa.Table.from_batches(batches, schema=self.schema), errors

    def _batch(self, rows: int, columns: list) -> pa.RecordBatch:
        arrays = []
        for field, (validity, offsets, data, null_count) in zip(self.schema, columns, strict=True):
            buffers = [None if validity is None else pa.py_buffer(validity)]
            if offsets is not None:
                buffers.append(pa.py_buffer(offsets))
            buffers.append(pa.py_buffer(data))
            arrays.append(pa.Array.from_buffers(field.type, rows, buffers, null_count=null_count))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _error(
        self, value: bytes | None, reason: str, detail: str, tag: str | None, record: str | None
    ) -> DecodeError:
        if reason == "header":
            try:
                self._codec.writer_of(value)
            except DecodeError as exc:
                return exc
            except Exception:  # not bytes at all (the codec itself would raise)
                return DecodeError("bad_marker", f"value is a {type(value).__name__}, not bytes")
            return DecodeError("corrupt_body", "header rejected by the native decoder")
        if record is not None:
            return DecodeError(
                "corrupt_body", f"event_type {tag!r} does not match payload {record}"
            )
        return DecodeError(reason, detail)
