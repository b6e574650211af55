"""What a micro-batch turns into: rows for the sinks, and dead letters for what cannot be used.

Two kinds of topic are landed: events (``events.raw``, ``events.overflow``; Avro events in the
contract) and dead letters (``events.dlq``; any bytes, with the reason in the headers). Each
kind knows how to build its Arrow table, which lake folder and ClickHouse table it goes to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Message

from eventplatform.enrich import Enricher, Reference
from eventplatform.events import DecodeError, EventCodec, EventPolicy, EventValidator
from eventplatform.events.arrow import landed_schema, with_kafka_columns
from eventplatform.events.columnar import ColumnarDecoder
from eventplatform.events.examples import example_event
from eventplatform.events.policy import REASON_COST, REASON_EVENT_TS
from eventplatform.kafka.dlq import DEAD_LETTER_SCHEMA, DeadLetter, parse_dead_letter
from eventplatform.land.crashpoints import crashpoints_suspended
from eventplatform.land.lake import OffsetRange, WrittenFile, write_dead_letters, write_events


class RowBuilder(Protocol):
    kind: str
    clickhouse_table: str
    lake_folder: str
    time_column: str  # the timestamp the lake's folders and ClickHouse's partitions follow
    write_lake: Callable[[Path, pa.Table, list[OffsetRange]], list[WrittenFile]]

    def build(self, messages: list[Message], landed_ms: int) -> tuple[pa.Table, list[DeadLetter]]:
        """Rows of the good messages, and a dead letter for each one that cannot be used."""
        ...

    def warm_up(self) -> None:
        """Load what building the first batch would, before any batch is in hand."""
        ...


class EventRows:
    """Contract events, decoded column by column (the native decoder); undecodable bytes
    and events outside the event policy (time window, cost cap) become dead letters.

    The policy is checked here as well as in the collector: anything produced to the topic
    directly (a replay tool, another producer) is held to the same rules, and one event can
    never make a batch fail in a sink (a decades-wide batch once failed ClickHouse's
    partitions-per-insert limit on every retry, and its shard stopped)."""

    kind = "events"
    clickhouse_table = "events"
    lake_folder = "events"
    time_column = "event_ts"
    write_lake = staticmethod(write_events)

    def __init__(self, policy: EventPolicy | None = None, enricher: Enricher | None = None) -> None:
        """``enricher``: the platform's (``enricher_from_settings``); without one, every
        customer has the default settings (IPs truncated) and no rates are loaded."""
        self.decoder = ColumnarDecoder()
        self.policy = policy or EventPolicy()
        self.enricher = enricher or Enricher(Reference())

    def warm_up(self) -> None:
        """Decode and enrich one example event: the first batch of a run then does not pay for
        loading the enrichments' parsers and reference data (0.2-0.5 s, while events wait)."""
        now_ms = int(time.time() * 1000)
        datum, errors = EventValidator().validate(example_event("page_view"), "warm-up", now_ms)
        if errors:
            raise RuntimeError(f"the example event is not valid: {errors}")
        body, errors = self.decoder.decode([EventCodec().encode(datum)])
        if errors:
            raise RuntimeError(f"the example event does not decode: {errors}")
        with crashpoints_suspended():
            self.enricher.enrich(with_kafka_columns(body, "warm-up", [0], [0], now_ms))
        self.enricher.user_agents.warm_up()  # the example sends no user agent

    def build(self, messages: list[Message], landed_ms: int) -> tuple[pa.Table, list[DeadLetter]]:
        body, errors = self.decoder.decode(list(map(Message.value, messages)))
        bad = {index for index, _ in errors}
        good = [m for i, m in enumerate(messages) if i not in bad] if bad else messages
        dead = [_dead_letter(messages[i], exc) for i, exc in errors]
        if good:
            body, good = self._within_policy(body, good, dead)
        if not good:
            return landed_schema().empty_table(), dead
        n = len(good)  # map over the C methods: a Python loop per message cost ~1 us an event
        table = with_kafka_columns(
            body,
            messages[0].topic(),
            np.fromiter(map(Message.partition, good), np.int32, n),
            np.fromiter(map(Message.offset, good), np.int64, n),
            landed_ms,
        )
        # Before both sinks: the lake and ClickHouse get the same enriched rows (enrich/).
        return self.enricher.enrich(table), dead

    def _within_policy(
        self, body: pa.Table, messages: list[Message], dead: list[DeadLetter]
    ) -> tuple[pa.Table, list[Message]]:
        """The rows (and their messages) inside the policy; a dead letter for each other."""
        policy = self.policy
        event_ms = _epoch_ms(body, "event_ts")
        received_ms = _epoch_ms(body, "received_ts")
        offset_ms = event_ms - received_ms
        ts_bad = (offset_ms < -policy.max_age_ms) | (offset_ms > policy.max_future_ms)
        # No cost is no spend (0); a NaN one (a producer that bypassed the collector) fails
        # both comparisons, so it is out of range like any other.
        cost = body.column("cost").fill_null(0.0).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            cost_bad = ~((cost >= 0) & (cost <= policy.max_event_cost))
        bad = ts_bad | cost_bad
        if not bad.any():
            return body, messages
        for row in np.flatnonzero(bad):
            if ts_bad[row]:
                problem = policy.event_ts_problem(int(event_ms[row]), int(received_ms[row]))
                letter = DecodeError(REASON_EVENT_TS, f"event_ts: {problem}")
            else:
                letter = DecodeError(REASON_COST, f"payload.cost: {policy.cost_problem(cost[row])}")
            dead.append(_dead_letter(messages[row], letter))
        kept = [m for m, is_bad in zip(messages, bad, strict=True) if not is_bad]
        return body.filter(pa.array(~bad)), kept


def _epoch_ms(table: pa.Table, column: str) -> np.ndarray:
    ms = pc.cast(pc.cast(table.column(column), pa.timestamp("ms")), pa.int64())
    return ms.to_numpy(zero_copy_only=False)


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
    time_column = "dead_ts"
    write_lake = staticmethod(write_dead_letters)

    def warm_up(self) -> None:
        """Nothing to load: dead letters are parsed from their headers."""

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


def rows_for(
    kind: str, policy: EventPolicy | None = None, enricher: Enricher | None = None
) -> RowBuilder:
    if kind == "events":
        return EventRows(policy, enricher)
    if kind == "dead_letters":
        return DeadLetterRows()
    raise ValueError(f"kind must be events or dead_letters, got {kind!r}")
