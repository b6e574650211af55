"""Avro single-object encoding of events: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body.

The fingerprint names the writer schema; the reader resolves it to the newest known version,
so a v1 message is read by a v2 consumer with the new optional fields set to their defaults.
Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is a short code a
dead-letter record can carry (``empty``, ``bad_marker``, ``truncated``, ``unknown_schema``,
``corrupt_body``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from eventplatform.events.schemas import (
    EVENT_TYPES,
    RECORD_TO_EVENT_TYPE,
    SchemaRegistry,
    SchemaVersion,
    default_registry,
)

MARKER = b"\xc3\x01"
HEADER_LEN = len(MARKER) + 8


class DecodeError(Exception):
    """A message that cannot be read. ``reason`` is a stable code, ``str()`` the details."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EventCodec:
    """Encodes with one writer version (the newest unless told) and decodes any known version."""

    def __init__(
        self, registry: SchemaRegistry | None = None, writer_version: int | None = None
    ) -> None:
        self.registry = registry or default_registry()
        self.writer: SchemaVersion = (
            self.registry.by_version[writer_version] if writer_version else self.registry.latest
        )
        self.reader: SchemaVersion = self.registry.latest
        self._header = MARKER + self.writer.fingerprint
        try:
            self._write: _Writer | None = compile_writer(self.writer.wire_schema)
        except NotImplementedError:  # a type the compiled writer does not know: fastavro
            self._write = None

    def encode(self, event: dict[str, Any]) -> bytes:
        """``event`` in contract form: timestamps as epoch ms, payload a plain dict.

        ``schema_version`` is stamped from the writer schema. An event that does not fit the
        writer schema raises ValueError.
        """
        datum = dict(event)
        datum["schema_version"] = self.writer.version
        datum["payload"] = (_record_name(event["event_type"]), event["payload"])
        if self._write is None:
            return self.encode_with_fastavro(datum)
        out = bytearray(self._header)
        try:
            self._write(out, datum)
        except (TypeError, AttributeError, KeyError, OverflowError, struct.error) as exc:
            raise ValueError(f"event does not fit the writer schema: {exc!r}") from None
        return bytes(out)

    def encode_with_fastavro(self, datum: dict[str, Any]) -> bytes:
        """The reference encoder (the compiled writer must give the same bytes); ``datum``
        already has ``schema_version`` and the payload as ``(record name, dict)``."""
        buf = io.BytesIO()
        buf.write(self._header)
        schemaless_writer(buf, self.writer.wire_schema, datum)
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """The event as the newest schema sees it; payload a plain dict, timestamps epoch ms."""
        writer = self.writer_of(data)
        body = io.BytesIO(memoryview(data)[HEADER_LEN:])  # type: ignore[index]
        reader_schema = None if writer is self.reader else self.reader.wire_schema
        try:
            event = schemaless_reader(
                body, writer.wire_schema, reader_schema, return_record_name=True
            )
        except EOFError as exc:
            raise DecodeError("truncated", f"body ends early ({exc or 'EOF'})") from exc
        except Exception as exc:  # fastavro raises many types on corrupt bytes
            raise DecodeError("corrupt_body", f"{type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data) - HEADER_LEN:  # type: ignore[arg-type]
            extra = len(data) - HEADER_LEN - body.tell()  # type: ignore[arg-type]
            raise DecodeError("corrupt_body", f"{extra} trailing bytes after the event")
        record_name, payload = event["payload"]
        if RECORD_TO_EVENT_TYPE.get(record_name) != event["event_type"]:
            raise DecodeError(
                "corrupt_body",
                f"event_type {event['event_type']!r} does not match payload {record_name}",
            )
        event["payload"] = payload
        return event

    def writer_of(self, data: bytes | None) -> SchemaVersion:
        """The writer schema a message names, or DecodeError."""
        if not data:
            raise DecodeError("empty", "message has no value")
        if len(data) < len(MARKER) or data[:2] != MARKER:
            raise DecodeError(
                "bad_marker", f"expected single-object marker c301, got {bytes(data[:2]).hex()!r}"
            )
        if len(data) < HEADER_LEN:
            raise DecodeError("truncated", f"{len(data)} bytes, shorter than the 10-byte header")
        fingerprint = bytes(data[2:HEADER_LEN])
        writer = self.registry.by_fingerprint.get(fingerprint)
        if writer is None:
            known = ", ".join(f"v{v.version}={v.fingerprint_hex}" for v in self.registry.versions)
            raise DecodeError(
                "unknown_schema", f"fingerprint {fingerprint.hex()} is not a known schema ({known})"
            )
        return writer


# --- the compiled writer -------------------------------------------------------------------
#
# fastavro's schemaless_writer spends most of an event's encode time resolving the union of
# each optional field (it tries every branch against the value). The contract's types are few
# (primitives, ``[null, X]`` unions, records, the payload union written as ``(name, dict)``),
# so a writer compiled once from the schema into nested closures does the same work with no
# per-value type search: about twice as fast. The bytes are the same (a test compares them).

_Writer = Callable[[bytearray, Any], None]
_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack


def _write_long(out: bytearray, n: int) -> None:
    if not -(2**63) <= n < 2**63:
        raise OverflowError(f"{n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)  # zigzag, then base-128 varint
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_int(out: bytearray, n: int) -> None:
    if not -(2**31) <= n < 2**31:
        raise OverflowError(f"{n} does not fit an Avro int")
    _write_long(out, n)


def _write_string(out: bytearray, value: str) -> None:
    data = value.encode()
    if len(data) < 64:  # the usual short string: its length is one byte
        out.append(len(data) << 1)
    else:
        _write_long(out, len(data))
    out += data


def _write_bytes(out: bytearray, value: bytes) -> None:
    _write_long(out, len(value))
    out += value


def _write_double(out: bytearray, value: float) -> None:
    out += _pack_double(value)


def _write_float(out: bytearray, value: float) -> None:
    out += _pack_float(value)


def _write_boolean(out: bytearray, value: bool) -> None:
    out.append(1 if value else 0)


def _write_null(out: bytearray, value: None) -> None:
    if value is not None:
        raise TypeError(f"expected null, got {value!r}")


_PRIMITIVES: dict[str, _Writer] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "bytes": _write_bytes,
    "string": _write_string,
}


def compile_writer(schema: Any) -> _Writer:
    """A function writing a datum of ``schema`` (fastavro-parsed, no logical types) to a
    bytearray. NotImplementedError for the types the contract does not use."""
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            raise NotImplementedError(f"type {schema}")
        return _PRIMITIVES[schema]
    if isinstance(schema, list):
        return _compile_union(schema)
    if schema.get("type") == "record":
        return _generate_record_writer(schema)
    if isinstance(schema.get("type"), str) and len(schema) == 1:
        return compile_writer(schema["type"])
    raise NotImplementedError(f"type {schema.get('type')}")


# A record's writer is generated as Python source with each field's code inline: a call per
# field (about 20 an event) costs as much as the writing itself. Types not listed here are
# written by their compiled function.
_INLINE = {
    "string": [
        "data = value.encode()",
        "if len(data) < 64:  # the usual short string: its length is one byte",
        "    out.append(len(data) << 1)",
        "else:",
        "    write_long(out, len(data))",
        "out += data",
    ],
    "double": ["out += pack_double(value)"],
    "boolean": ["out.append(1 if value else 0)"],
    "long": ["write_long(out, value)"],
    "int": ["write_int(out, value)"],
}


def _generate_record_writer(schema: dict[str, Any]) -> _Writer:
    namespace: dict[str, Any] = {
        "write_long": _write_long,
        "write_int": _write_int,
        "pack_double": _pack_double,
    }
    lines = ["def write_record(out, datum):"]
    for i, field in enumerate(schema["fields"]):
        ftype = field["type"]
        namespace[f"default_{i}"] = field.get("default")
        lines.append(f"    value = datum.get({field['name']!r}, default_{i})")
        if isinstance(ftype, str) and ftype in _INLINE:
            lines += [f"    {line}" for line in _INLINE[ftype]]
        elif (
            isinstance(ftype, list)
            and ftype[0] == "null"
            and len(ftype) == 2
            and (isinstance(ftype[1], str) and ftype[1] in _INLINE)
        ):
            lines += ["    if value is None:", "        out.append(0)", "    else:"]
            lines += ["        out.append(2)"] + [f"        {line}" for line in _INLINE[ftype[1]]]
        else:
            namespace[f"write_{i}"] = compile_writer(ftype)
            lines.append(f"    write_{i}(out, value)")
    source = "\n".join(lines)
    exec(compile(source, f"<Avro writer of {schema['name']}>", "exec"), namespace)
    return namespace["write_record"]


def _compile_union(branches: list[Any]) -> _Writer:
    if len(branches) == 2 and "null" in branches:  # an optional value: [null, X] or [X, null]
        null_index = branches.index("null")
        other = compile_writer(branches[1 - null_index])
        null_tag, other_tag = (0, 2) if null_index == 0 else (2, 0)  # zigzag of the index

        def write_optional(out: bytearray, value: Any) -> None:
            if value is None:
                out.append(null_tag)
            else:
                out.append(other_tag)
                other(out, value)

        return write_optional
    named: dict[str, tuple[int, _Writer]] = {}
    for index, branch in enumerate(branches):
        if not (isinstance(branch, dict) and branch.get("type") == "record"):
            raise NotImplementedError("a union of other than records or [null, X]")
        named[branch["name"]] = (index, compile_writer(branch))

    def write_named(out: bytearray, value: tuple[str, Any]) -> None:
        name, datum = value  # fastavro's tuple notation: (record name, record)
        index, write = named[name]
        _write_long(out, index)
        write(out, datum)

    return write_named


def _record_name(event_type: str) -> str:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise ValueError(f"unknown event_type {event_type!r}") from None
