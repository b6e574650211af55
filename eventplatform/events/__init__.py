"""The event contract: Avro schemas, the single-object codec, JSON validation."""

from eventplatform.events.codec import DecodeError, EventCodec
from eventplatform.events.schemas import (
    AD_EVENT_TYPES,
    EVENT_TYPES,
    SchemaRegistry,
    SchemaVersion,
    default_registry,
)
from eventplatform.events.validate import EventValidator, FieldError, parse_timestamp_ms

__all__ = [
    "AD_EVENT_TYPES",
    "EVENT_TYPES",
    "DecodeError",
    "EventCodec",
    "EventValidator",
    "FieldError",
    "SchemaRegistry",
    "SchemaVersion",
    "default_registry",
    "parse_timestamp_ms",
]
