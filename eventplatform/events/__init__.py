"""The event contract: Avro schemas, the single-object codec, JSON validation."""

from eventplatform.events.codec import DecodeError, EventCodec
from eventplatform.events.policy import EventPolicy
from eventplatform.events.schemas import (
    AD_EVENT_TYPES,
    EVENT_TYPES,
    SchemaRegistry,
    SchemaVersion,
    default_registry,
)
from eventplatform.events.validate import (
    EventValidator,
    FieldError,
    dead_letter_reason,
    parse_timestamp_ms,
)

__all__ = [
    "AD_EVENT_TYPES",
    "EVENT_TYPES",
    "DecodeError",
    "EventCodec",
    "EventPolicy",
    "EventValidator",
    "FieldError",
    "SchemaRegistry",
    "SchemaVersion",
    "dead_letter_reason",
    "default_registry",
    "parse_timestamp_ms",
]
