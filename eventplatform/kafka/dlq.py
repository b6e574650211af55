"""Dead letters: what could not be used, with why, so that nothing vanishes.

One format for every stage that rejects something (the collector rejecting an event, the
landing job meeting an undecodable message). The value is the original bytes, untouched, so
a fixed consumer can replay them; headers carry the reason and where it came from. The key is
the customer id when known (same partitioning as events.raw).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from confluent_kafka import Message, Producer

HEADER_NAMES = (
    "reason",
    "detail",
    "stage",
    "customer_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "dead_ts",
    "original_length",
    "original_sha256",
)

# What a dead letter keeps of an original larger than the collector's
# EP_COLLECTOR_DLQ_MAX_VALUE_BYTES when nothing else is said (the broker takes 1 MiB).
DEFAULT_MAX_VALUE_BYTES = 65_536


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # stable code: validation, bad_marker, truncated, unknown_schema, ...
    detail: str  # what exactly is wrong, for a human
    stage: str  # collect | land
    value: bytes  # the original bytes
    customer_id: str | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    dead_ts: int = 0  # epoch ms when it was dead-lettered
    original_length: int | None = None  # set when ``value`` is a truncated prefix
    original_sha256: str | None = None

    @property
    def truncated(self) -> bool:
        return self.original_length is not None and self.original_length > len(self.value)

    def truncate(self, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> DeadLetter:
        """This letter with at most ``max_bytes`` of the original: a letter the broker
        cannot take (over its message size) would fail the produce of the whole batch. The
        original's length and SHA-256 stay in headers, and the detail says it (the landed
        dead_letters rows keep the detail), so the loss is visible and checkable."""
        if len(self.value) <= max_bytes:
            return self
        length, digest = len(self.value), hashlib.sha256(self.value).hexdigest()
        note = f" [value truncated to {max_bytes} of {length} bytes; original sha256 {digest}]"
        return replace(
            self,
            value=self.value[:max_bytes],
            detail=self.detail[: 4000 - len(note)] + note,
            original_length=length,
            original_sha256=digest,
        )

    def headers(self) -> list[tuple[str, bytes]]:
        fields = {
            "reason": self.reason,
            "detail": self.detail[:4000],
            "stage": self.stage,
            "customer_id": self.customer_id,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "dead_ts": self.dead_ts or int(time.time() * 1000),
            "original_length": self.original_length,
            "original_sha256": self.original_sha256,
        }
        return [(k, str(v).encode()) for k, v in fields.items() if v is not None]


def send_dead_letter(producer: Producer, topic: str, letter: DeadLetter, **produce_kw: Any) -> None:
    """Produce asynchronously; the caller flushes (and checks delivery) before it commits."""
    key = letter.customer_id.encode() if letter.customer_id else None
    producer.produce(topic, key=key, value=letter.value, headers=letter.headers(), **produce_kw)


def parse_dead_letter(message: Message) -> DeadLetter:
    headers = {k: v.decode(errors="replace") for k, v in (message.headers() or [])}

    def as_int(name: str) -> int | None:
        return int(headers[name]) if name in headers else None

    return DeadLetter(
        reason=headers.get("reason", "unknown"),
        detail=headers.get("detail", ""),
        stage=headers.get("stage", "unknown"),
        value=message.value() or b"",
        customer_id=headers.get("customer_id"),
        source_topic=headers.get("source_topic"),
        source_partition=as_int("source_partition"),
        source_offset=as_int("source_offset"),
        dead_ts=as_int("dead_ts") or 0,
        original_length=as_int("original_length"),
        original_sha256=headers.get("original_sha256"),
    )


# The landed shape of a dead letter (lake folder dead_letters/, ClickHouse dead_letters).
DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("source_topic", pa.string()),
        pa.field("source_partition", pa.int32()),
        pa.field("source_offset", pa.int64()),
        pa.field("dead_ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("value", pa.binary(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),  # in events.dlq
        pa.field("kafka_offset", pa.int64(), nullable=False),
    ]
)
