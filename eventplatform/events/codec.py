"""Avro single-object encoding of events: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body.

The fingerprint names the writer schema; the reader resolves it to the newest known version,
so a v1 message is read by a v2 consumer with the new optional fields set to their defaults.
Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is a short code a
dead-letter record can carry (``empty``, ``bad_marker``, ``truncated``, ``unknown_schema``,
``corrupt_body``).
"""

from __future__ import annotations

import io
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

    def encode(self, event: dict[str, Any]) -> bytes:
        """``event`` in contract form: timestamps as epoch ms, payload a plain dict.

        ``schema_version`` is stamped from the writer schema.
        """
        datum = dict(event)
        datum["schema_version"] = self.writer.version
        datum["payload"] = (_record_name(event["event_type"]), event["payload"])
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


def _record_name(event_type: str) -> str:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise ValueError(f"unknown event_type {event_type!r}") from None
