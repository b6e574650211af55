"""The collector, run as `eventplatform collect`, over real HTTP, into the real broker."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from eventplatform.collect.customers import CustomerStore
from eventplatform.events import EventCodec
from eventplatform.events.examples import example_event
from eventplatform.kafka.broker import free_port
from eventplatform.kafka.clients import make_admin, make_consumer
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.kafka.topics import ensure_topics, platform_topics
from eventplatform.settings import REPO_ROOT, Settings


@dataclass
class RunningCollector:
    url: str
    process: subprocess.Popen
    log_path: Path
    admin_url: str = ""  # /metrics, /readyz, /openapi.json (loopback, its own port)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_collector(settings: Settings, **env: str) -> Iterator[RunningCollector]:
    """`eventplatform collect` on a free port; its output goes to a file, not a pipe: a pipe
    that nobody reads fills up (64 KiB) and then blocks whichever thread writes next, be it
    uvicorn's event loop or librdkafka's broker thread logging a lost connection."""
    port, admin_port = free_port(), free_port()
    log_path = Path(tempfile.mkstemp(prefix="collector-", suffix=".log")[1])
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventplatform.cli", "collect", "--port", str(port)],
            env={"EP_COLLECTOR_ADMIN_PORT": str(admin_port), **os.environ, **env},
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    collector = RunningCollector(
        f"http://127.0.0.1:{port}", process, log_path, f"http://127.0.0.1:{admin_port}"
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(
                httpx.get(f"{u}/healthz", timeout=1).status_code == 200
                for u in (collector.url, collector.admin_url)
            ):
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"collector did not start: {collector.output()}")
        time.sleep(0.2)
    try:
        yield collector
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log_path.unlink(missing_ok=True)


def gauge(admin_url: str, name: str) -> float:
    """One of the collector's gauges, from its Prometheus metrics (on the admin listener)."""
    for line in httpx.get(f"{admin_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


@pytest.fixture
def platform(platform_env: Settings) -> Settings:
    ensure_topics(make_admin(platform_env.kafka.bootstrap), platform_topics(platform_env.kafka))
    return platform_env


@pytest.fixture
def keys(platform: Settings) -> dict[str, str]:
    store = CustomerStore(platform.customers_db)
    return {name: store.add(name) for name in ("acme", "globex")}


def read_topic(
    settings: Settings, topic: str, expected: int, timeout_s: float = 30, settle_s: float = 1.0
) -> list:
    """Every message of a topic: waits for ``expected``, then a moment for any extra."""
    consumer = make_consumer(settings.kafka.bootstrap, f"t-{time.monotonic_ns()}")
    consumer.subscribe([topic])
    messages, deadline, settle_until = [], time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            messages.append(message)
        if len(messages) >= expected:
            settle_until = settle_until or time.monotonic() + settle_s
            if time.monotonic() > settle_until:
                break
    consumer.close()
    return messages


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_accepts_valid_events_and_dead_letters_bad_ones(platform: Settings, keys) -> None:
    batch = [
        example_event("page_view", event_id="pv-1"),
        example_event("purchase"),
        {"event_type": "purchase", "event_ts": 1, "payload": {"amount": "12"}},
        example_event("click", customer_id="globex"),  # not acme's to send
        "not an object",
    ]
    with running_collector(platform) as collector:
        url = collector.url
        response = httpx.post(f"{url}/v1/events", json=batch, headers=auth(keys["acme"]))
    assert response.status_code == 202
    body = response.json()
    assert (body["received"], body["accepted"], body["overflowed"]) == (5, 2, 0)
    assert body["event_ids"][0] == "pv-1" and len(body["event_ids"]) == 2
    rejected = {r["index"]: r["errors"] for r in body["rejected"]}
    assert set(rejected) == {2, 3, 4}
    assert "payload.amount: expected number, got string '12'" in rejected[2]
    assert rejected[3] == [
        "customer_id: does not match the API key's customer; omit it or send your own"
    ]
    assert rejected[4] == ["$: expected a JSON object, got string"]

    raw = read_topic(platform, platform.kafka.raw_topic, 2)
    codec = EventCodec()
    events = [codec.decode(m.value()) for m in raw]
    assert [m.key() for m in raw] == [b"acme", b"acme"]
    assert sorted(e["event_id"] for e in events) == sorted(body["event_ids"])
    assert all(e["customer_id"] == "acme" and e["received_ts"] > 1.7e12 for e in events)
    dead = [parse_dead_letter(m) for m in read_topic(platform, platform.kafka.dlq_topic, 3)]
    assert [orjson.loads(d.value) for d in dead] == batch[2:]  # what the customer sent
    assert {d.reason for d in dead} == {"validation"} and {d.stage for d in dead} == {"collect"}
    assert all(d.customer_id == "acme" for d in dead)
    assert "payload.amount: expected number" in dead[0].detail


def test_ndjson_gzip_and_checksums(platform: Settings, keys) -> None:
    ndjson = b"\n".join(orjson.dumps(example_event("signup", event_id=f"s{i}")) for i in range(5))
    ndjson += b"\n{broken json\n"
    body = gzip.compress(ndjson)
    with running_collector(platform) as collector:
        url = collector.url
        headers = {
            **auth(keys["globex"]),
            "Content-Encoding": "gzip",
            "Content-Type": "application/x-ndjson",
            "X-Content-SHA256": hashlib.sha256(body).hexdigest(),
        }
        ok = httpx.post(f"{url}/v1/events", content=body, headers=headers)
        assert ok.status_code == 202, ok.text
        assert (ok.json()["accepted"], len(ok.json()["rejected"])) == (5, 1)
        assert ok.json()["rejected"][0]["errors"][0].startswith("$: not valid JSON")

        tampered = httpx.post(
            f"{url}/v1/events", content=body, headers={**headers, "X-Content-SHA256": "0" * 64}
        )
        assert tampered.status_code == 400
        assert "X-Content-SHA256 does not match" in tampered.json()["error"]
        not_gzip = httpx.post(
            f"{url}/v1/events",
            content=ndjson,
            headers={**auth(keys["globex"]), "Content-Encoding": "gzip"},
        )
        assert not_gzip.status_code == 400 and "not gzip" in not_gzip.json()["error"]
        brotli = httpx.post(
            f"{url}/v1/events",
            content=ndjson,
            headers={**auth(keys["globex"]), "Content-Encoding": "br"},
        )
        assert brotli.status_code == 415
        not_json = httpx.post(f"{url}/v1/events", content=b"[1, 2", headers=auth(keys["globex"]))
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    # Only the good request's 5 events and 1 dead letter exist.
    assert len(read_topic(platform, platform.kafka.raw_topic, 5)) == 5
    assert len(read_topic(platform, platform.kafka.dlq_topic, 1)) == 1


def test_auth_size_limits_and_revocation(platform: Settings, keys) -> None:
    env = {
        "EP_COLLECTOR_MAX_BODY_BYTES": "20000",
        "EP_COLLECTOR_MAX_DECOMPRESSED_BYTES": "50000",
        "EP_COLLECTOR_KEY_CACHE_S": "0",
    }
    one = [example_event("click")]
    with running_collector(platform, **env) as collector:
        url = collector.url
        assert httpx.post(f"{url}/v1/events", json=one).status_code == 401
        assert (
            httpx.post(
                f"{url}/v1/events", json=one, headers=auth("ep_000000000000_" + "x" * 43)
            ).status_code
            == 401
        )
        too_big = httpx.post(f"{url}/v1/events", json=one * 200, headers=auth(keys["acme"]))
        assert too_big.status_code == 413
        bomb = gzip.compress(b"[" + b" " * 200_000 + b"]")
        assert len(bomb) < 20000
        inflated = httpx.post(
            f"{url}/v1/events",
            content=bomb,
            headers={**auth(keys["acme"]), "Content-Encoding": "gzip"},
        )
        assert inflated.status_code == 413 and "decompressed" in inflated.json()["error"]

        assert (
            httpx.post(f"{url}/v1/events", json=one, headers=auth(keys["acme"])).status_code == 202
        )
        key_id = keys["acme"].split("_")[1]
        CustomerStore(platform.customers_db).revoke(key_id)
        assert (
            httpx.post(f"{url}/v1/events", json=one, headers=auth(keys["acme"])).status_code == 401
        )


def test_quota_overflow_and_hard_cap(platform: Settings, keys) -> None:
    env = {
        "EP_COLLECTOR_RATE_PER_S": "0.001",
        "EP_COLLECTOR_BURST": "10",
        "EP_COLLECTOR_HARD_CAP_PER_S": "0.001",
        "EP_COLLECTOR_HARD_CAP_BURST": "30",
    }
    batch = [example_event("page_view") for _ in range(25)]
    with running_collector(platform, **env) as collector:
        url = collector.url
        first = httpx.post(f"{url}/v1/events", json=batch, headers=auth(keys["acme"]))
        assert (first.json()["accepted"], first.json()["overflowed"]) == (10, 15)
        capped = httpx.post(f"{url}/v1/events", json=batch, headers=auth(keys["acme"]))
        assert capped.status_code == 429 and int(capped.headers["Retry-After"]) >= 1
        # Another customer is not affected by acme's flood.
        other = httpx.post(f"{url}/v1/events", json=batch[:5], headers=auth(keys["globex"]))
        assert (other.json()["accepted"], other.json()["overflowed"]) == (5, 0)
        metrics = httpx.get(f"{collector.admin_url}/metrics").text
    assert 'collector_events_overflowed_total{customer="acme"} 15' in metrics
    assert 'collector_requests_total{status="429"} 1' in metrics
    raw = read_topic(platform, platform.kafka.raw_topic, 15)
    overflow = read_topic(platform, platform.kafka.overflow_topic, 15)
    assert sorted(m.key() for m in raw).count(b"acme") == 10 and len(raw) == 15
    assert len(overflow) == 15 and {m.key() for m in overflow} == {b"acme"}


def test_full_buffer_is_503_and_nothing_is_produced(platform: Settings, keys) -> None:
    # A producer buffer of 5 messages: a batch of 10 cannot fit, so it is refused up front.
    with running_collector(platform, EP_COLLECTOR_PRODUCER_MAX_MESSAGES="5") as collector:
        url = collector.url
        busy = httpx.post(
            f"{url}/v1/events", json=[example_event("click")] * 10, headers=auth(keys["acme"])
        )
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
        fits = httpx.post(
            f"{url}/v1/events?sync=true",
            json=[example_event("click")] * 3,
            headers=auth(keys["acme"]),
        )
        assert fits.status_code == 202
        assert fits.json()["delivery"] == {"complete": True, "failed": [], "pending": 0}
    assert len(read_topic(platform, platform.kafka.raw_topic, 3)) == 3


def test_a_batch_is_kept_whole_or_not_at_all_when_the_byte_limit_is_reached(
    platform: Settings, keys
) -> None:
    """The broker is down (nothing listens at its address), so everything accepted stays in
    the collector's buffer. Clients post concurrently until the 1 MiB limit answers 503: the
    buffer then holds exactly the messages of the 202s, no part of a refused batch, and no
    more bytes than the limit."""
    padding = "x" * 8000  # about 8 KB an event: a 1 MiB buffer holds some 130 of them
    unlimited = {"EP_COLLECTOR_BURST": "1e6", "EP_COLLECTOR_HARD_CAP_BURST": "1e6"}
    # Past half of 300 messages requests are taken in threads, several at once.
    env = {
        **unlimited,
        "EP_COLLECTOR_PRODUCER_MAX_MIB": "1",
        "EP_COLLECTOR_PRODUCER_MAX_MESSAGES": "300",
    }
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    env["EP_COLLECTOR_SHUTDOWN_FLUSH_S"] = "1"  # at the end: no broker will come to take them

    def batch(client: int, request: int, size: int) -> list[dict]:
        events = [example_event("click", event_id=f"c{client}-{request}-{i}") for i in range(size)]
        for event in events:
            event["properties"] = {"note": padding}
        events[0]["event_type"] = "not-a-type"  # one dead letter a batch: it takes room too
        return events

    async def flood(url: str) -> list[tuple[int, int]]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one_client(c: int) -> list[tuple[int, int]]:
                answers = []
                for r in range(12):
                    size = 40 if r % 3 == 0 else 9
                    response = await client.post(
                        f"{url}/v1/events", json=batch(c, r, size), headers=auth(keys["acme"])
                    )
                    answers.append((response.status_code, size))
                return answers

            return [
                a for answers in await asyncio.gather(*map(one_client, range(4))) for a in answers
            ]

    with running_collector(platform, **env) as collector:
        answers = asyncio.run(flood(collector.url))
        buffered_messages = gauge(collector.admin_url, "collector_producer_buffer_messages")
        buffered_bytes = gauge(collector.admin_url, "collector_producer_buffer_bytes")
    assert {status for status, _ in answers} == {202, 503}, answers
    kept = sum(size for status, size in answers if status == 202)
    assert buffered_messages == kept
    assert 0 < buffered_bytes <= 2**20


def test_large_batches_in_a_thread_and_small_ones_on_the_loop_all_land(
    platform: Settings, keys
) -> None:
    from eventplatform.collect.app import INLINE_MAX_EVENTS

    large = [example_event("click", event_id=f"L{i}") for i in range(INLINE_MAX_EVENTS + 500)]
    small = [example_event("signup", event_id=f"S{i}") for i in range(50)]
    unlimited = {"EP_COLLECTOR_BURST": "1e6", "EP_COLLECTOR_HARD_CAP_BURST": "1e6"}

    async def send_both(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            post = functools.partial(client.post, f"{url}/v1/events?sync=true")
            return await asyncio.gather(
                post(json=large, headers=auth(keys["acme"])),
                *(post(json=small, headers=auth(keys["acme"])) for _ in range(3)),
            )

    with running_collector(platform, **unlimited) as collector:
        url = collector.url
        answers = asyncio.run(send_both(url))
    assert [a.status_code for a in answers] == [202] * 4
    assert [a.json()["accepted"] for a in answers] == [len(large)] + [len(small)] * 3
    assert all(a.json()["delivery"]["complete"] for a in answers)
    assert len(read_topic(platform, platform.kafka.raw_topic, len(large) + 150)) == 1650


def test_operational_endpoints(platform: Settings, keys) -> None:
    with running_collector(platform) as collector:
        url, admin = collector.url, collector.admin_url
        assert httpx.get(f"{admin}/readyz").json() == {"status": "ready"}
        document = httpx.get(f"{admin}/openapi.json").json()
        assert set(document["paths"]["/v1/events"]["post"]["responses"]) >= {
            "202",
            "400",
            "401",
            "413",
            "429",
            "503",
        }
        httpx.post(
            f"{url}/v1/events", json=[example_event("bid")] * 4, headers=auth(keys["globex"])
        )
        metrics = httpx.get(f"{admin}/metrics").text
        # Operations are not on the public listener (customer names and volumes, a broker
        # call per /readyz): only /healthz is.
        for path in ("/metrics", "/readyz", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 404
        assert httpx.get(f"{url}/healthz").status_code == 200
        # POST /v1/events skips Starlette's routing; the path's other methods still meet it
        refused = httpx.get(f"{url}/v1/events")
        assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
    assert 'collector_events_accepted_total{customer="globex"} 4' in metrics
    assert "collector_producer_buffer_fill" in metrics
    assert "collector_produce_latency_seconds_count" in metrics


def test_sigterm_flushes_every_accepted_event(platform: Settings, keys) -> None:
    batches, accepted = 20, 0
    with running_collector(platform) as collector:
        url, process = collector.url, collector.process
        with httpx.Client() as client:
            for b in range(batches):
                events = [example_event("page_view", event_id=f"b{b}-{i}") for i in range(250)]
                response = client.post(f"{url}/v1/events", json=events, headers=auth(keys["acme"]))
                accepted += response.json()["accepted"]
        process.send_signal(signal.SIGTERM)  # right away: the producer still holds events
        # uvicorn shuts down gracefully, then re-raises the signal: status -SIGTERM.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        log = collector.output()
    assert accepted == 5000
    assert "every accepted event reached the broker" in log
    ids = {
        EventCodec().decode(m.value())["event_id"]
        for m in read_topic(platform, platform.kafka.raw_topic, accepted)
    }
    assert len(ids) == accepted


def test_customer_cli_and_ndjson_replay(platform: Settings, tmp_path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "eventplatform.cli", *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )

    added = cli("customers", "add", "initech")
    assert added.returncode == 0 and added.stdout.startswith("ep_")
    assert cli("customers", "add", "initech").returncode == 1
    assert "must be 1-63 lowercase" in cli("customers", "add", "Bad Name!").stderr
    key_id = added.stdout.strip().split("_")[1]
    listed = cli("customers", "list").stdout
    assert "initech" in listed and f"key {key_id}" in listed and "active" in listed
    assert cli("customers", "revoke", key_id).returncode == 0
    assert "revoked" in cli("customers", "list").stdout
    assert cli("customers", "revoke", key_id).returncode == 1

    replay = tmp_path / "events.ndjson"
    lines = [orjson.dumps(example_event("purchase", event_id=f"r{i}")) for i in range(7)]
    replay.write_bytes(b"\n".join([*lines, b'{"event_type": "nope"}']) + b"\n")
    done = cli("replay", str(replay), "--customer", "initech", "--batch", "3")
    assert done.returncode == 0, done.stderr
    assert "7 accepted, 1 rejected" in done.stdout
    assert "replaying" in done.stderr  # the progress bar
    assert len(read_topic(platform, platform.kafka.raw_topic, 7)) == 7


def test_a_failed_delivery_is_counted_and_logged_with_the_event_id(caplog) -> None:
    """Delivery reports share one callback; a failure names the event from its bytes."""
    from eventplatform.collect.intake import DeliveryWaiter, Intake
    from eventplatform.collect.metrics import Metrics
    from eventplatform.collect.quotas import Quotas
    from eventplatform.events import EventValidator

    class FakeMessage:
        def __init__(self, topic: str, value: bytes) -> None:
            self._topic, self._value = topic, value

        def topic(self) -> str:
            return self._topic

        def key(self) -> bytes:
            return b"cust-a"

        def value(self) -> bytes:
            return self._value

        def latency(self) -> float:
            return 0.002

        def __len__(self) -> int:
            return len(self._value)

    metrics = Metrics()
    intake = Intake(None, "raw", "overflow", "dlq", Quotas(1, 1, 1, 1), metrics, 10)  # type: ignore[arg-type]
    datum, _ = EventValidator().validate(
        example_event("click", event_id="e-42"), "cust-a", 1795428000123
    )
    encoded = EventCodec().encode(datum)
    waiter = DeliveryWaiter(3)
    intake._delivered(None, FakeMessage("raw", encoded), waiter)
    with caplog.at_level("ERROR"):
        intake._delivered("broker said no", FakeMessage("raw", encoded), waiter)
        intake._delivered("broker said no", FakeMessage("dlq", b"{not json"), waiter)
    assert intake.delivery_failures == 2
    assert metrics.get("collector_delivery_failures_total", customer="cust-a") == 2
    assert "event e-42 of cust-a" in caplog.text and "a dead letter" in caplog.text
    assert waiter.wait(0) and waiter.failed == ["broker said no", "broker said no"]
    assert metrics.latency_counts[0] == 1  # the acknowledged one, 2 ms


def test_the_native_tally_counts_acknowledgements_and_hands_failures_to_python() -> None:
    """A request that does not wait has the native callback: an acknowledgement gives its
    bytes back and lands in the same latency histogram; a failure takes the Python path
    (kept by the journal, or counted and logged) with its bytes given back there."""
    from eventplatform.collect.intake import Intake
    from eventplatform.collect.metrics import Metrics
    from eventplatform.collect.quotas import Quotas

    class FakeMessage:
        def __init__(self, value: bytes, latency: float | None) -> None:
            self._value, self._latency = value, latency

        def topic(self) -> str:
            return "dlq"

        def key(self) -> bytes:
            return b"cust-a"

        def value(self) -> bytes:
            return self._value

        def latency(self) -> float | None:
            return self._latency

        def __len__(self) -> int:
            return len(self._value)

    metrics = Metrics()
    intake = Intake(None, "raw", "overflow", "dlq", Quotas(1, 1, 1, 1), metrics, 10)  # type: ignore[arg-type]
    tally = intake._tally
    assert tally is not None
    kept: list[bytes] = []

    def journal(err, msg, again) -> bool:
        kept.append(msg.value())
        return False  # kept on disk, not produced again

    intake.keep = journal
    intake._held = 30  # as accept() takes it for three messages of 10 bytes
    tally(None, FakeMessage(b"a" * 10, 0.002))
    tally(None, FakeMessage(b"b" * 10, None))  # librdkafka without a latency: 0
    assert intake.buffered_bytes == 10
    tally("broker went away", FakeMessage(b"c" * 10, 0.3))
    assert kept == [b"c" * 10] and intake.buffered_bytes == 0
    assert tally.messages == 2 and tally.bytes == 20
    text = metrics.render()
    assert 'collector_produce_latency_seconds_bucket{le="0.005"} 2' in text
    assert "collector_produce_latency_seconds_count 2" in text
    intake.keep = None  # no journal: the failure is counted and logged
    intake._held += 10
    tally("refused", FakeMessage(b"{not json}", 0.3))
    assert intake.delivery_failures == 1 and intake.buffered_bytes == 0


def test_the_events_endpoint_reads_and_answers_as_starlette_did() -> None:
    """POST /v1/events is a plain ASGI app now: what it reads of a request (first value of
    a header, last ?sync) and the bytes it answers are Starlette's."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from eventplatform.collect.app import Incoming, _error, _events_answer

    for query in (
        b"",
        b"sync=true",
        b"sync=1&sync=no",
        b"sync=no&sync=YES",
        b"sync",
        b"x=1&sync=%74rue",
    ):
        scope = {
            "type": "http",
            "query_string": query,
            "headers": [(b"content-type", b"a"), (b"content-type", b"b"), (b"x-h", b"\xe9")],
        }
        starlette = Request(scope)
        ours = Incoming(scope, None)  # type: ignore[arg-type]
        asked = starlette.query_params.get("sync", "").lower() in ("1", "true", "yes")
        assert ours.sync() == asked, query
        for name in ("content-type", "x-h", "authorization"):
            assert ours.header(name.encode()) == starlette.headers.get(name)
    for status, message, headers in (
        (401, "missing key", {"WWW-Authenticate": "Bearer"}),
        (429, 'Kunde \u00e9 \u2028 "quoted" \n tab\t', {"Retry-After": "1"}),
        (413, "body of 9 bytes", {}),
    ):
        answer = _error(status, message, **headers)
        reference = JSONResponse({"error": message}, status_code=status, headers=headers or None)
        assert (answer.status, answer.body) == (reference.status_code, reference.body)
        assert answer.raw_headers() == reference.raw_headers
    payload = {"customer_id": "acme", "accepted": 1, "event_ids": ["e-\u00e9"]}
    answer = _events_answer(payload, 202)
    assert orjson.loads(answer.body) == payload
    assert answer.raw_headers() == [
        (b"content-length", str(len(answer.body)).encode()),
        (b"content-type", b"application/json"),
    ]
