"""Tenant isolation at intake (issue 13): what one hostile customer can do to the collector
and to the others. The collector runs as `eventplatform collect` over real HTTP into the
real broker; nothing is faked."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from eventplatform.collect.customers import CustomerStore
from eventplatform.events.examples import example_event
from eventplatform.kafka.dlq import parse_dead_letter
from eventplatform.land.batches import rows_for
from eventplatform.settings import Settings
from eventplatform_tests.test_collector import auth, gauge, read_topic, running_collector


@pytest.fixture
def platform(topics: Settings) -> Settings:
    return topics


@pytest.fixture
def keys(platform: Settings) -> dict[str, str]:
    store = CustomerStore(platform.customers_db)
    return {name: store.add(name) for name in ("acme", "globex")}


# About 20 KB of gzip that inflates to 20 MiB of `{}` lines: 7 million "events".
BOMB_LINES = 20 * 2**20 // 3


def gzip_bomb(lines: int = BOMB_LINES) -> bytes:
    return gzip.compress(b"{}\n" * lines, 9)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads")


@dataclass
class BombFigures:
    bomb_statuses: list[int] = field(default_factory=list)
    bomb_seconds: list[float] = field(default_factory=list)
    other_statuses: list[int] = field(default_factory=list)
    other_seconds: list[float] = field(default_factory=list)
    other_accepted: int = 0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.other_seconds)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def bomb_scenario(
    url: str, bomber_key: str, other_key: str, bombs: int = 6, other_requests: int = 40
) -> BombFigures:
    """``bombs`` concurrent gzip bombs from one customer while another customer posts
    50-event batches one after another (from the moment the bombs are sent until it has
    sent ``other_requests`` and the bombs are answered)."""
    body = gzip_bomb()
    figures = BombFigures()
    batch = orjson.dumps([example_event("page_view") for _ in range(50)])
    limits = httpx.Limits(max_connections=bombs + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        # One request each first: connections are open and keys cached before timing.
        for key in (bomber_key, other_key):
            await client.post(f"{url}/v1/events", content=b"[]", headers=auth(key))
        bombs_done = asyncio.Event()

        async def bomb() -> None:
            started = time.monotonic()
            response = await client.post(
                f"{url}/v1/events",
                content=body,
                headers={
                    **auth(bomber_key),
                    "Content-Encoding": "gzip",
                    "Content-Type": "application/x-ndjson",
                },
            )
            figures.bomb_seconds.append(time.monotonic() - started)
            figures.bomb_statuses.append(response.status_code)

        async def other() -> None:
            while len(figures.other_seconds) < other_requests or not bombs_done.is_set():
                started = time.monotonic()
                response = await client.post(
                    f"{url}/v1/events",
                    content=batch,
                    headers={**auth(other_key), "Content-Type": "application/json"},
                )
                figures.other_seconds.append(time.monotonic() - started)
                figures.other_statuses.append(response.status_code)
                if response.status_code == 202:
                    figures.other_accepted += response.json()["accepted"]

        async def all_bombs() -> None:
            await asyncio.gather(*(bomb() for _ in range(bombs)))
            bombs_done.set()

        await asyncio.gather(all_bombs(), other())
    return figures


def test_gzip_bombs_from_one_customer_do_not_delay_another(platform: Settings, keys) -> None:
    with running_collector(platform) as collector:
        figures = asyncio.run(bomb_scenario(collector.url, keys["acme"], keys["globex"]))
        peak = peak_rss_mib(collector.process.pid)
    assert figures.bomb_statuses == [413] * 6, figures.bomb_statuses
    assert max(figures.bomb_seconds) < 2.0, figures.bomb_seconds
    assert set(figures.other_statuses) == {202}
    assert max(figures.other_seconds) < 1.0, sorted(figures.other_seconds)[-5:]
    assert peak < 600, f"collector peak RSS {peak:.0f} MiB"
    # Everything globex was told 202 for is in events.raw, nothing of acme's bombs.
    raw = read_topic(platform, platform.kafka.raw_topic, figures.other_accepted)
    assert len(raw) == figures.other_accepted == 50 * len(figures.other_statuses)
    assert {m.key() for m in raw} == {b"globex"}


def post(url: str, key: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/events", content=body, headers={**auth(key), **headers}, timeout=30
    )


def test_every_gzip_member_is_inflated_within_the_caps(platform: Settings, keys) -> None:
    env = {"EP_COLLECTOR_MAX_DECOMPRESSED_BYTES": str(2**20)}
    first = b"".join(
        orjson.dumps(example_event("click", event_id=f"m1-{i}")) + b"\n" for i in range(3)
    )
    second = b"".join(
        orjson.dumps(example_event("click", event_id=f"m2-{i}")) + b"\n" for i in range(2)
    )
    ndjson = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"}
    with running_collector(platform, **env) as collector:
        url, key = collector.url, keys["acme"]
        # `cat a.gz b.gz`: two members, both taken (only the first was, answered 202).
        both = post(url, key, gzip.compress(first) + gzip.compress(second), **ndjson)
        # The cap counts every member: the second one takes it over.
        over = post(url, key, gzip.compress(first) + gzip.compress(b" " * 2**20), **ndjson)
        # Each member's event count adds up too (limit 10,000 events).
        many = post(url, key, gzip.compress(b"{}\n" * 6000) * 2, **ndjson)
        junk = post(url, key, gzip.compress(first) + b"not gzip", **ndjson)
        truncated = post(url, key, gzip.compress(first) + gzip.compress(second)[:-4], **ndjson)
        array = post(
            url,
            key,
            gzip.compress(b"[" + b"{}," * 200_000 + b"{}]"),
            **{"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    assert both.status_code == 202 and both.json()["accepted"] == 5
    assert both.json()["event_ids"] == [f"m1-{i}" for i in range(3)] + ["m2-0", "m2-1"]
    assert over.status_code == 413 and "decompressed" in over.json()["error"]
    assert many.status_code == 413 and "10000 events" in many.json()["error"]
    assert junk.status_code == 400 and "trailing" in junk.json()["error"]
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    assert array.status_code == 413 and "10000 events" in array.json()["error"]
    raw = read_topic(platform, platform.kafka.raw_topic, 5)
    assert len(raw) == 5  # only the first request's: every refused one kept nothing


def test_a_huge_bad_line_is_a_truncated_dead_letter_and_nothing_leaks(
    platform: Settings, keys
) -> None:
    """A line too big for the broker used to fail the produce mid-batch: a 500 with part of
    the batch queued (a retry duplicates it) and its room never given back (then 503s)."""
    env = {"EP_COLLECTOR_DLQ_MAX_VALUE_BYTES": "10000", "EP_COLLECTOR_PRODUCER_MAX_MIB": "4"}
    huge_bad = b'{"event_type": "click", "payload": "' + b"x" * (2 * 2**20)  # not JSON
    huge_good = orjson.dumps(example_event("click", event_id="big", properties={"n": "y" * 2**20}))
    good = [orjson.dumps(example_event("click", event_id=f"g{i}")) for i in range(3)]
    body = b"\n".join([good[0], huge_bad, good[1], huge_good, good[2]])
    with running_collector(platform, **env) as collector:
        url, key = collector.url, keys["acme"]
        answers = [post(url, key, body, **{"Content-Type": "application/x-ndjson"})]
        # Enough of them to fill the 4 MiB buffer many times over had the room leaked.
        answers += [
            post(url, key, body, **{"Content-Type": "application/x-ndjson"}) for _ in range(5)
        ]
        normal = [
            httpx.post(
                f"{url}/v1/events",
                json=[example_event("page_view", event_id=f"n{r}-{i}") for i in range(20)],
                headers=auth(keys["globex"]),
            )
            for r in range(10)
        ]
        deadline = time.monotonic() + 30
        while gauge(collector.admin_url, "collector_producer_buffer_bytes") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        left = gauge(collector.admin_url, "collector_producer_buffer_bytes")
    assert left == 0  # every byte of room taken was given back
    for answer in answers:
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"] == 3
        rejected = {r["index"]: r["errors"] for r in answer.json()["rejected"]}
        assert set(rejected) == {1, 3}
        assert "too large" in rejected[1][0] and "too large" in rejected[3][0]
    assert [n.status_code for n in normal] == [202] * 10
    raw = read_topic(platform, platform.kafka.raw_topic, 6 * 3 + 200)
    ids = [m.key() for m in raw]
    assert len(raw) == 6 * 3 + 200 and ids.count(b"acme") == 18  # no duplicates, none lost
    dead = read_topic(platform, platform.kafka.dlq_topic, 12)
    letters = [parse_dead_letter(m) for m in dead]
    assert len(letters) == 12
    # As the landing job lands them: the dead_letters rows say the value is truncated.
    landed = rows_for("dead_letters").build(dead, 0)[0].to_pylist()
    assert all("[value truncated to 10000 of" in row["detail"] for row in landed)
    assert all(len(row["value"]) == 10000 for row in landed)
    bad = [x for x in letters if x.original_length == len(huge_bad)]
    big = [x for x in letters if x.original_length == len(huge_good)]
    assert len(bad) == len(big) == 6
    for letter, original in [(bad[0], huge_bad), (big[0], huge_good)]:
        assert letter.value == original[:10000] and letter.truncated
        assert letter.original_sha256 == hashlib.sha256(original).hexdigest()
        assert f"truncated to 10000 of {len(original)} bytes" in letter.detail


def test_a_flood_of_random_keys_does_not_slow_a_valid_customer(platform: Settings, keys) -> None:
    env = {"EP_COLLECTOR_AUTH_NEGATIVE_CACHE_SIZE": "500"}
    batch = orjson.dumps([example_event("page_view") for _ in range(50)])

    async def scenario(url: str) -> tuple[list[int], list[float], list[float]]:
        statuses: list[int] = []
        valid: list[float] = []
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as c:
            await c.post(f"{url}/v1/events", content=b"[]", headers=auth(keys["globex"]))
            before = []
            for _ in range(20):
                started = time.monotonic()
                await c.post(f"{url}/v1/events", content=batch, headers=auth(keys["globex"]))
                before.append(time.monotonic() - started)

            async def flood() -> None:
                while len(statuses) < 1500:
                    key = f"ep_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
                    r = await c.post(f"{url}/v1/events", content=batch, headers=auth(key))
                    statuses.append(r.status_code)

            tasks = [asyncio.create_task(flood()) for _ in range(30)]
            await asyncio.sleep(0.3)
            while len(statuses) < 1500 or len(valid) < 20:
                started = time.monotonic()
                r = await c.post(f"{url}/v1/events", content=batch, headers=auth(keys["globex"]))
                assert r.status_code == 202
                valid.append(time.monotonic() - started)
            await asyncio.gather(*tasks)
        return statuses, before, valid

    with running_collector(platform, **env) as collector:
        statuses, _, valid = asyncio.run(scenario(collector.url))
        cached = gauge(collector.admin_url, "collector_auth_unknown_keys_cached")
        wrong = f"ep_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        lookups = gauge(collector.admin_url, "collector_auth_lookups")
        for _ in range(20):  # the same wrong key: looked up once, then remembered
            assert post(collector.url, wrong, b"[]").status_code == 401
        again = gauge(collector.admin_url, "collector_auth_lookups")
    assert len(statuses) >= 1500 and set(statuses) <= {401, 503}
    assert cached <= 500  # memory bounded, however many keys came
    assert again == lookups + 1
    # Noticeably: the valid customer's usual request stays fast during the flood and its
    # slowest within 2 s (the flood's requests share its event loop, so it is not free; on
    # this 2-core machine under other load a single request has reached 1.2 s).
    assert sorted(valid)[len(valid) // 2] < 0.25, sorted(valid)
    assert max(valid) < 2.0, sorted(valid)[-5:]


def test_sync_waits_hold_no_thread_and_are_capped_per_customer(platform: Settings, keys) -> None:
    """50 ?sync=true requests each waiting 5 s for the broker (a 5 s linger) held 50 worker
    threads (the pool has 40): everyone's large batch then waited behind them."""
    env = {"EP_COLLECTOR_PRODUCER_LINGER_MS": "5000", "EP_COLLECTOR_SYNC_MAX_PER_CUSTOMER": "60"}
    small = orjson.dumps([example_event("click")])
    large = orjson.dumps([example_event("click") for _ in range(1500)])  # in a worker thread

    async def scenario(url: str, pid: int) -> tuple[list[int], float, int, list[int]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=80)) as c:

            async def one(key: str, body: bytes, sync: bool) -> httpx.Response:
                suffix = "?sync=true" if sync else ""
                return await c.post(f"{url}/v1/events{suffix}", content=body, headers=auth(key))

            waits = [asyncio.create_task(one(keys["acme"], small, True)) for _ in range(50)]
            await asyncio.sleep(1.0)  # all 50 are waiting for the broker now
            held = threads(pid)
            started = time.monotonic()
            other = await one(keys["globex"], large, False)
            other_s = time.monotonic() - started
            assert other.status_code == 202
            statuses = [r.status_code for r in await asyncio.gather(*waits)]
            # The cap: at most 60 at once per customer; beyond it 429 before anything is read.
            burst = await asyncio.gather(*(one(keys["acme"], small, True) for _ in range(70)))
        return statuses, other_s, held, [r.status_code for r in burst]

    with running_collector(platform, **env) as collector:
        statuses, other_s, held, burst = asyncio.run(scenario(collector.url, collector.process.pid))
    assert statuses == [202] * 50
    assert other_s < 2.0  # not behind the sync waits (before: 4 s, the rest of their linger)
    assert held < 40, f"{held} threads while 50 sync requests wait"
    assert sorted(burst) == [202] * 60 + [429] * 10


def test_customers_db_is_created_for_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = CustomerStore(tmp_path / "customers.sqlite")
        store.add("acme")
    finally:
        os.umask(old)
    for path in tmp_path.glob("customers.sqlite*"):  # the database, its -wal and -shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (tmp_path / "customers.sqlite").exists()


def test_slow_uploads_hold_only_their_own_customer(platform: Settings, keys) -> None:
    """Large bodies sent a trickle at a time (slow loris) by two customers, more of them than
    there are worker turns (2): a third customer's gzip batch is taken at once. A body is
    read in its customer's turn, and only then waits for a worker's."""
    slow = [keys["acme"], CustomerStore(platform.customers_db).add("initech")]
    gz = gzip.compress(orjson.dumps([example_event("click") for _ in range(50)]))

    async def scenario(url: str) -> tuple[list[float], int]:
        host, port = url.removeprefix("http://").split(":")
        writers = []
        for i in range(4):  # more than EP_COLLECTOR_HEAVY_CONCURRENCY (2)
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                (
                    "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {slow[i % 2]}\r\nContent-Length: {2**20}\r\n\r\n["
                ).encode()
            )
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(0.5)
        seconds = []
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(5):
                started = time.monotonic()
                r = await client.post(
                    f"{url}/v1/events",
                    content=gz,
                    headers={**auth(keys["globex"]), "Content-Encoding": "gzip"},
                )
                assert r.status_code == 202 and r.json()["accepted"] == 50
                seconds.append(time.monotonic() - started)
        for writer in writers:
            writer.close()
        return seconds, len(writers)

    with running_collector(platform) as collector:
        seconds, _ = asyncio.run(scenario(collector.url))
    assert max(seconds) < 1.0, seconds
