"""Dead letters: what could not be used, with why, so that nothing vanishes.

One format for every stage that rejects something (the collector rejecting an event, the
landing job meeting an undecodable message). The value is the original bytes, untouched, so
a fixed consumer can replay them; headers carry the reason and where it came from. The key is
the customer id when known (same partitioning as events.raw).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
)


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
