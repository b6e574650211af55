"""Pause and resume signals on the compacted topic campaign.control (key = campaign id).

The topic is the record of what ad servers were told: the controller reads the last signal
per campaign from it, and sends one only where the status changed. A crash after sending
and before anything else leaves the topic right, so a re-run sends nothing new; two
controllers racing can at worst repeat a signal with the same meaning.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from eventplatform.budgets.campaigns import read_campaigns
from eventplatform.budgets.spend import ACTIVE, CampaignState, campaign_states, read_spend
from eventplatform.clickhouse import ClickHouse
from eventplatform.kafka.clients import make_consumer, make_producer, watermark_offsets


def read_last_signals(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[str, dict]:
    """The newest signal per campaign on the topic (read to its end, no group commits)."""
    consumer = make_consumer(
        bootstrap, f"budget-reader-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        partitions = []
        for p in metadata.partitions:
            low, high = watermark_offsets(consumer, TopicPartition(topic, p), timeout_s)
            if high > low:
                partitions.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not partitions:
            return {}
        consumer.assign(partitions)
        pending = {tp.partition for tp in partitions}
        last: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s}s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == -191:  # _PARTITION_EOF
                    pending.discard(message.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {message.error()}")
            if message.value() is not None:
                last[message.key().decode()] = orjson.loads(message.value())
        return last
    finally:
        consumer.close()


class BudgetController:
    """Computes every campaign's status and signals the changes to ad servers."""

    def __init__(
        self, clickhouse: ClickHouse, bootstrap: str, topic: str, reread_every_s: float = 30.0
    ) -> None:
        self.clickhouse = clickhouse
        self.bootstrap = bootstrap
        self.topic = topic
        self.reread_every_s = reread_every_s
        self._producer = make_producer(bootstrap)
        self._last: dict[str, dict] | None = None
        self._last_read = 0.0

    def _last_signals(self) -> dict[str, dict]:
        if self._last is None or time.monotonic() - self._last_read > self.reread_every_s:
            self._last = read_last_signals(self.bootstrap, self.topic)
            self._last_read = time.monotonic()
        return self._last

    def refresh(self, now: datetime | None = None) -> tuple[list[CampaignState], list[dict]]:
        """Statuses now, and the signals sent (only changes; an active new campaign: none)."""
        now = now or datetime.now(UTC)
        with self.clickhouse.session():  # one engine open (embedded) for both reads
            campaigns = read_campaigns(self.clickhouse)
            spend = read_spend(self.clickhouse, now)
        states = campaign_states(campaigns, spend, now)
        last = self._last_signals()
        signals = []
        for state in states:
            previous = last.get(state.campaign_id, {}).get("status", ACTIVE)
            if state.status == previous:
                continue
            signal = signal_value(state, previous, now)
            self._producer.produce(
                self.topic, key=state.campaign_id.encode(), value=orjson.dumps(signal)
            )
            signals.append(signal)
        if signals:
            undelivered = self._producer.flush(30)
            if undelivered:
                self._last = None  # unsure what ad servers saw: read the topic next time
                raise RuntimeError(f"{undelivered} campaign signals not delivered")
            for signal in signals:
                last[signal["campaign_id"]] = signal
        return states, signals


def signal_value(state: CampaignState, previous: str, now: datetime) -> dict[str, Any]:
    value = asdict(state)
    value["previous_status"] = previous
    value["action"] = "resume" if state.status == ACTIVE else "pause"
    value["signal_ts"] = now.isoformat()
    return value
