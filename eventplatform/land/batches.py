"""What a micro-batch turns into: rows for the sinks, and dead letters for what cannot be used.

Two kinds of topic are landed: events (``events.raw``, ``events.overflow``; Avro events in the
contract) and dead letters (``events.dlq``; any bytes, with the reason in the headers). Each
kind knows how to build its Arrow table, which lake folder and ClickHouse table it goes to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pyarrow as pa
from confluent_kafka import Message

from eventplatform.events import DecodeError
from eventplatform.events.arrow import landed_schema, with_kafka_columns
from eventplatform.events.columnar import ColumnarDecoder
from eventplatform.kafka.dlq import DEAD_LETTER_SCHEMA, DeadLetter, parse_dead_letter
from eventplatform.land.lake import OffsetRange, WrittenFile, write_dead_letters, write_events


class RowBuilder(Protocol):
    kind: str
    clickhouse_table: str
    lake_folder: str
    write_lake: Callable[[Path, pa.Table, list[OffsetRange]], list[WrittenFile]]

    def build(self, messages: list[Message], landed_ms: int) -> tuple[pa.Table, list[DeadLetter]]:
        """Rows of the good messages, and a dead letter for each one that cannot be used."""
        ...


class EventRows:
    """Contract events, decoded column by column (the native decoder); undecodable bytes
    become dead letters."""

    kind = "events"
    clickhouse_table = "events"
    lake_folder = "events"
    write_lake = staticmethod(write_events)

    def __init__(self) -> None:
        self.decoder = ColumnarDecoder()

    def build(self, messages: list[Message], landed_ms: int) -> tuple[pa.Table, list[DeadLetter]]:
        body, errors = self.decoder.decode([m.value() for m in messages])
        bad = {index for index, _ in errors}
        good = [m for i, m in enumerate(messages) if i not in bad] if bad else messages
        dead = [_dead_letter(messages[i], exc) for i, exc in errors]
        if not good:
            return landed_schema().empty_table(), dead
        table = with_kafka_columns(
            body,
            messages[0].topic(),
            [m.partition() for m in good],
            [m.offset() for m in good],
            landed_ms,
        )
        return table, dead


def _dead_letter(message: Message, exc: DecodeError) -> DeadLetter:
    key = message.key()
    return DeadLetter(
        reason=exc.reason,
        detail=exc.detail,
        stage="land",
        value=message.value() or b"",
        customer_id=key.decode(errors="replace") if key else None,
        source_topic=message.topic(),
        source_partition=message.partition(),
        source_offset=message.offset(),
    )


class DeadLetterRows:
    """Dead letters: every message is usable (reason and origin are in its headers)."""

    kind = "dead_letters"
    clickhouse_table = "dead_letters"
    lake_folder = "dead_letters"
    write_lake = staticmethod(write_dead_letters)

    def build(self, messages: list[Message], landed_ms: int) -> tuple[pa.Table, list[DeadLetter]]:
        rows = []
        for message in messages:
            letter = parse_dead_letter(message)
            _, message_ts = message.timestamp()
            rows.append(
                {
                    "reason": letter.reason,
                    "detail": letter.detail,
                    "stage": letter.stage,
                    "customer_id": letter.customer_id,
                    "source_topic": letter.source_topic,
                    "source_partition": letter.source_partition,
                    "source_offset": letter.source_offset,
                    "dead_ts": letter.dead_ts or message_ts,
                    "value": letter.value,
                    "kafka_partition": message.partition(),
                    "kafka_offset": message.offset(),
                }
            )
        return pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA), []


def rows_for(kind: str) -> RowBuilder:
    if kind == "events":
        return EventRows()
    if kind == "dead_letters":
        return DeadLetterRows()
    raise ValueError(f"kind must be events or dead_letters, got {kind!r}")
