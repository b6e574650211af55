"""The traffic simulator: realistic shape, labels that tell the truth, reconcilable sends."""

from __future__ import annotations

import time
from collections import Counter

from eventplatform.events import DecodeError, EventCodec, EventValidator
from eventplatform.kafka.clients import make_admin, make_consumer
from eventplatform.kafka.topics import TopicSpec, ensure_topics
from eventplatform.simulate.run import KafkaSink, simulate
from eventplatform.simulate.traffic import TrafficGenerator, TrafficSpec, campaigns_csv

NOW_MS = 1795428000000


def test_labels_tell_which_events_are_bad() -> None:
    generator = TrafficGenerator(TrafficSpec(seed=3, bad_rate=0.05, anomalies=True))
    validator = EventValidator()
    events = [e for t in range(200) for e in generator.events(100, NOW_MS + t * 1000, t_s=t + 50)]
    outcome = Counter(
        (e.label.startswith("bad:"), bool(validator.validate(e.event, e.customer_id, NOW_MS)[1]))
        for e in events
    )
    assert outcome[(True, False)] == 0 and outcome[(False, True)] == 0  # labels are exact
    assert 0.03 < outcome[(True, True)] / len(events) < 0.07
    labels = Counter(e.label for e in events)
    assert labels["anomaly:spike"] > 0 and labels["anomaly:click_fraud"] > 0
    assert sum(generator.sent.values()) == len(events)


def test_same_seed_same_traffic() -> None:
    def make() -> list:
        return [e.event for e in TrafficGenerator(TrafficSpec(seed=11)).events(500, NOW_MS)]

    assert make() == make()


def test_hot_customers_dominate_and_every_type_appears() -> None:
    generator = TrafficGenerator(TrafficSpec(seed=5, customers=10, hot_customers=2))
    events = generator.events(20_000, NOW_MS)
    per_customer = Counter(e.customer_id for e in events)
    top_two = sum(n for _, n in per_customer.most_common(2))
    assert top_two / len(events) > 0.7
    assert set(Counter(e.event_type for e in events)) == {
        "page_view",
        "click",
        "signup",
        "purchase",
        "impression",
        "ad_click",
        "conversion",
        "bid",
    }


def test_ad_costs_follow_the_pricing_model() -> None:
    generator = TrafficGenerator(TrafficSpec(seed=9))
    campaigns = {c.campaign_id: c for c in generator.campaigns}
    for item in generator.events(5000, NOW_MS):
        payload = item.event["payload"]
        if item.event_type in ("impression", "ad_click", "conversion"):
            campaign = campaigns[payload["campaign_id"]]
            assert payload["cost"] == campaign.cost_of(item.event_type)
            charged = {"CPM": "impression", "CPC": "ad_click", "CPA": "conversion"}
            assert (payload["cost"] > 0) == (charged[campaign.pricing_model] == item.event_type)


def test_diurnal_curve_and_peaks() -> None:
    generator = TrafficGenerator(TrafficSpec(day_seconds=240, peak_every_s=100, peak_length_s=5))
    assert generator.rate_multiplier(0) == 10.0  # a peak
    night = generator.rate_multiplier(240 * 4 / 24 + 10)  # ~04:00, outside a peak
    afternoon = generator.rate_multiplier(240 * 16 / 24)
    assert night < 0.5 < 1.5 < afternoon
    samples = [generator.rate_multiplier(t / 10) for t in range(2400) if (t / 10) % 100 >= 5]
    assert 0.9 < sum(samples) / len(samples) < 1.1  # the curve averages to the asked rate


def test_campaigns_csv_lists_every_campaign() -> None:
    generator = TrafficGenerator(TrafficSpec(customers=4, campaigns_per_advertiser=3))
    lines = campaigns_csv(generator.campaigns).splitlines()
    assert lines[0].startswith("advertiser,campaign_id,total_budget,daily_budget")
    assert len(lines) == 1 + 2 * 3


def test_simulation_to_kafka_reconciles_with_the_topic(bootstrap: str, unique: str) -> None:
    topic = f"sim.{unique}"
    ensure_topics(make_admin(bootstrap), [TopicSpec(topic, 3, 1, {})])
    generator = TrafficGenerator(
        TrafficSpec(seed=2, bad_rate=0.02, peak_every_s=1.0, peak_length_s=0.2)
    )
    summary = simulate(generator, KafkaSink(bootstrap, topic), rate=2000, duration_s=2.0)
    assert summary.total() > 2000

    consumer = make_consumer(bootstrap, f"g-{unique}")
    consumer.subscribe([topic])
    codec = EventCodec()
    landed, poison = Counter(), Counter()
    deadline = time.monotonic() + 60
    while sum(landed.values()) + sum(poison.values()) < summary.total():
        assert time.monotonic() < deadline, "not every simulated event reached the topic"
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        customer = message.key().decode()
        try:
            codec.decode(message.value())
            landed[customer] += 1
        except DecodeError:
            poison[customer] += 1
    consumer.close()
    expected = summary.by_customer()
    assert {c: v["good"] for c, v in expected.items() if v["good"]} == dict(landed)
    assert {c: v["bad"] for c, v in expected.items() if v["bad"]} == dict(poison)
