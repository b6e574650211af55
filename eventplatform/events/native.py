"""The collector's fast path: a JSON body's good events straight to Avro, in native code.

:class:`NativeEncoder` wraps ``eventplatform_avro.EventEncoder`` (Rust,
``native/avro_columnar/src/intake.rs``): one pass over the body parses, validates and writes
the single-object encoded message of every event it can prove good, and hands every other
event back as the bytes it was sent as. Those go through :class:`EventValidator` as before,
so every rule and every error message stays the Python validator's; the native code only
never takes an event the validator would reject and writes the bytes :class:`EventCodec`
writes (a hypothesis test compares both, valid and invalid bodies). A body it does not read
(not UTF-8, not strict JSON, too many events) is left to the Python path whole.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from eventplatform.events.codec import EventCodec
from eventplatform.events.schemas import EVENT_TYPES
from eventplatform.events.validate import MAX_EPOCH_MS, MAX_ID, MAX_STRING, EventValidator

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A body's events as the native encoder left them: ``messages`` (``{"value", "key"}``
    per good event, in order, for ``Producer.produce_batch``) with their ``event_ids``;
    ``python``: (index, bytes as sent) of the events the Python validator takes; ``size``:
    the good values' bytes; ``count``: events in the body."""

    messages: list[dict[str, bytes]]
    event_ids: list[str]
    python: list[tuple[int, bytes]]
    size: int
    count: int
    received_ms: int
    ndjson: bool
    max_event_bytes: int  # an NDJSON line over it is an event rejected as too large

    def __len__(self) -> int:
        return self.count


class NativeEncoder:
    """The native fast path, configured from a validator and a codec (same schema, same
    limits, same policy)."""

    def __init__(self, validator: EventValidator, codec: EventCodec) -> None:
        from eventplatform_avro import EventEncoder

        if validator.version != codec.writer.version:
            raise ValueError("the validator and the codec must use the same contract version")
        writer = codec.writer
        self._native = EventEncoder(
            codec._header,
            json.loads(writer.canonical_form),
            writer.version,
            dict(EVENT_TYPES),
            sorted(validator.allowed_envelope),
            list(validator.envelope_optional),
            MAX_STRING,
            MAX_ID,
            validator._max_age_ms,
            validator._max_future_ms,
            float(validator._max_cost),
            MAX_EPOCH_MS,
        )

    def encode(
        self,
        body: bytes,
        ndjson: bool,
        customer: str,
        received_ms: int,
        source: str,
        max_events: int,
        max_event_bytes: int,
    ) -> Encoded | None:
        """The body's events, or None when the Python path must read the body whole."""
        out: Any = self._native.encode(
            body, ndjson, customer, received_ms, source, max_events, max_event_bytes
        )
        if out is None:
            return None
        messages, event_ids, python, size = out
        count = len(messages) + len(python)
        return Encoded(
            messages, event_ids, python, size, count, received_ms, ndjson, max_event_bytes
        )


def native_encoder(validator: EventValidator, codec: EventCodec) -> NativeEncoder | None:
    """The native encoder, or None (with a warning) when this contract has a type it does not
    write: then every event takes the Python path, as before it existed."""
    try:
        return NativeEncoder(validator, codec)
    except (ImportError, ValueError) as exc:
        log.warning("native event encoder unavailable, the Python path takes every event: %s", exc)
        return None
