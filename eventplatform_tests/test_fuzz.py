"""Bounded fuzzing: the codec and validation never crash; the collector never answers 5xx and
accounts for every event it rejects (Schemathesis from its own OpenAPI document, Hypothesis)."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventplatform.collect.customers import CustomerStore
from eventplatform.collect.openapi import openapi_document
from eventplatform.events import DecodeError, EventCodec, EventValidator
from eventplatform.events.codec import MARKER
from eventplatform.events.examples import EXAMPLES, example_event
from eventplatform.kafka.clients import make_admin
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import Settings
from eventplatform_tests.test_collector import read_topic, running_collector

BOUNDED = settings(
    max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@BOUNDED
@given(data=st.binary(max_size=300))
def test_decoding_any_bytes_is_an_event_or_a_decode_error(data: bytes) -> None:
    codec = EventCodec()
    for candidate in (data, MARKER + codec.writer.fingerprint + data):
        try:
            event = codec.decode(candidate)
        except DecodeError as exc:
            assert exc.reason in {
                "empty",
                "bad_marker",
                "truncated",
                "unknown_schema",
                "corrupt_body",
            }
        else:
            assert codec.decode(codec.encode(event)) == event


@BOUNDED
@given(
    event_type=st.sampled_from(sorted(EXAMPLES)),
    field=st.text(max_size=12),
    value=json_values,
    in_payload=st.booleans(),
)
def test_validation_of_mutated_events_errs_or_round_trips(
    event_type, field, value, in_payload
) -> None:
    event = example_event(event_type)
    target = event["payload"] if in_payload else event
    target[field or "event_type"] = copy.deepcopy(value)
    datum, errors = EventValidator().validate(event, "cust", 1795428000000)
    if datum is None:
        assert errors and all(e.field and e.message for e in errors)
    else:
        codec = EventCodec()
        assert codec.decode(codec.encode(datum)) == datum


@BOUNDED
@given(value=json_values)
def test_validation_of_arbitrary_json_never_raises(value) -> None:
    datum, errors = EventValidator().validate(value, "cust", 1795428000000)
    assert (datum is None) == bool(errors)


@BOUNDED
@given(
    event_type=st.sampled_from(sorted(EXAMPLES)),
    field=st.text(max_size=12),
    value=json_values,
    in_payload=st.booleans(),
    event_ts=st.sampled_from(["2026-11-23T10:15:00Z", "2026-11-23T10:15:00", 1795428000000, -1]),
)
def test_fast_path_takes_only_good_events_and_agrees_with_full_validation(
    event_type, field, value, in_payload, event_ts
) -> None:
    event = example_event(event_type, event_ts=event_ts, event_id="e-1")
    target = event["payload"] if in_payload else event
    target[field or "event_type"] = copy.deepcopy(value)
    validator = EventValidator()
    fast = validator._good_event(copy.deepcopy(event), "cust", 1795428000000, "http")
    full, errors = validator._validate(event, "cust", 1795428000000, "http")
    assert fast == full, errors  # None == None: the fast path left a bad event to the full one


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_good_events_take_the_fast_path(event_type: str) -> None:
    validator = EventValidator()
    for event in (example_event(event_type), example_event(event_type, event_ts=1795428000000)):
        datum = validator._good_event(event, "cust", 1795428000000, "http")
        assert datum is not None
        assert datum == validator._validate(event, "cust", 1795428000000, "http")[0] | {
            "event_id": datum["event_id"]
        }


def test_collector_fuzz_no_5xx_and_every_event_accounted_for(platform_env: Settings) -> None:
    # imported here, not at collection: Schemathesis and the schema take 1-2 s to load, which
    # every run of this module's other tests (the no-broker tier) would pay
    import schemathesis

    openapi = schemathesis.openapi.from_dict(openapi_document())
    ensure_topics(make_admin(platform_env.kafka.bootstrap), platform_topics(platform_env.kafka))
    key = CustomerStore(platform_env.customers_db).add("fuzz")
    totals = {"requests": 0, "accepted": 0, "overflowed": 0, "rejected": 0}
    env = {
        "EP_COLLECTOR_RATE_PER_S": "1e9",
        "EP_COLLECTOR_BURST": "1e9",
        "EP_COLLECTOR_HARD_CAP_PER_S": "1e9",
        "EP_COLLECTOR_HARD_CAP_BURST": "1e9",
    }
    with running_collector(platform_env, **env) as collector:
        url = collector.url

        def record(response: httpx.Response | object) -> None:
            status = response.status_code
            assert status < 500, f"{status}: {response.text[:300]}"
            totals["requests"] += 1
            if status == 202:
                body = response.json()
                assert (
                    body["accepted"] + body["overflowed"] + len(body["rejected"])
                    == body["received"]
                )
                for name in ("accepted", "overflowed"):
                    totals[name] += body[name]
                totals["rejected"] += len(body["rejected"])

        operation = openapi["/v1/events"]["POST"]

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy())
        def schema_cases(case) -> None:
            record(case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}))

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(
            body=st.one_of(
                st.binary(max_size=500),
                st.lists(json_values, max_size=5).map(lambda v: json.dumps(v).encode()),
            ),
            content_type=st.sampled_from(
                ["application/json", "application/x-ndjson", "text/plain"]
            ),
        )
        def raw_bodies(body: bytes, content_type: str) -> None:
            record(
                httpx.post(
                    f"{url}/v1/events",
                    content=body,
                    headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
                )
            )

        schema_cases()
        raw_bodies()
    assert totals["requests"] >= 200
    assert totals["rejected"] > 0
    raw = read_topic(platform_env, platform_env.kafka.raw_topic, totals["accepted"])
    dlq = read_topic(platform_env, platform_env.kafka.dlq_topic, totals["rejected"])
    assert len(raw) == totals["accepted"]
    assert len(dlq) == totals["rejected"]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
