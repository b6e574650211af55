"""Paces generated traffic at a target average rate and hands it to a sink (HTTP or Kafka)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import orjson

from eventplatform.events import EventCodec, EventValidator
from eventplatform.kafka.clients import make_producer
from eventplatform.simulate.traffic import SimulatedEvent, Summary, TrafficGenerator


class Sink(Protocol):
    def send(self, events: list[SimulatedEvent]) -> None: ...
    def close(self) -> None: ...


class KafkaSink:
    """Straight to events.raw, as a trusted internal producer would write.

    Good events are validated, stamped and Avro-encoded like the collector does; events
    labelled bad are written as their raw JSON bytes: poison messages the landing job must
    route to the dead-letter topic.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = make_producer(bootstrap)
        self.codec = EventCodec()
        self.validator = EventValidator()
        self.failed = 0

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failed += 1

    def send(self, events: list[SimulatedEvent]) -> None:
        now_ms = int(time.time() * 1000)
        for item in events:
            datum, _errors = self.validator.validate(item.event, item.customer_id, now_ms)
            value = self.codec.encode(datum) if datum else orjson.dumps(item.event)
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        key=item.customer_id.encode(),
                        value=value,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:  # local queue full: wait for deliveries, never drop
                    self.producer.poll(0.1)
        self.producer.poll(0)

    def close(self) -> None:
        remaining = self.producer.flush(60)
        if remaining or self.failed:
            raise RuntimeError(f"{remaining} events not delivered, {self.failed} failed")


def simulate(
    generator: TrafficGenerator,
    sink: Sink,
    rate: float,
    duration_s: float,
    tick_s: float = 0.2,
    progress: Callable[[float, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Summary:
    """Send ``rate`` events/s on average (times the diurnal curve and peaks) for ``duration_s``."""
    summary = Summary()
    start = clock()
    next_tick = start
    carry = 0.0
    sent = 0
    while True:
        elapsed = clock() - start
        if elapsed >= duration_s:
            break
        wanted = rate * generator.rate_multiplier(elapsed) * tick_s + carry
        n = int(wanted)
        carry = wanted - n
        if n:
            events = generator.events(n, int(time.time() * 1000), t_s=elapsed)
            sink.send(events)
            sent += len(events)
        if progress:
            progress(elapsed, sent)
        next_tick += tick_s
        delay = next_tick - clock()
        if delay > 0:
            time.sleep(delay)
    sink.close()
    summary.add(generator.sent)
    return summary


class HttpSink:
    """Through the collector, as customers send: one request per customer per tick.

    429 and 503 are answered by waiting Retry-After and sending the same batch again (with
    the same event ids), so nothing the simulator made is dropped on its side. Counts of what
    the collector took are kept per customer for reconciliation.
    """

    def __init__(self, url: str, keys: dict[str, str], timeout_s: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/") + "/v1/events"
        self.keys = keys
        self.client = httpx.Client(timeout=timeout_s)
        self.taken: dict[str, dict[str, int]] = {}
        self.retries = 0

    def send(self, events: list[SimulatedEvent]) -> None:
        by_customer: dict[str, list] = {}
        for item in events:
            by_customer.setdefault(item.customer_id, []).append(item.event)
        for customer, batch in by_customer.items():
            key = self.keys.get(customer)
            if key is None:
                raise KeyError(f"no API key for simulated customer {customer}")
            while True:
                response = self.client.post(
                    self.url,
                    content=orjson.dumps(batch),
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                )
                if response.status_code in (429, 503):
                    self.retries += 1
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                if response.status_code != 202:
                    raise RuntimeError(
                        f"collector answered {response.status_code}: {response.text[:500]}"
                    )
                body = response.json()
                counts = self.taken.setdefault(
                    customer, {"accepted": 0, "overflowed": 0, "rejected": 0}
                )
                counts["accepted"] += body["accepted"]
                counts["overflowed"] += body["overflowed"]
                counts["rejected"] += len(body["rejected"])
                break

    def close(self) -> None:
        self.client.close()
