"""The collector's HTTP API (Starlette): POST /v1/events and the operational endpoints.

Answers fast: the response does not wait for the broker unless ``?sync=true``; a usual batch
is validated and produced on the event loop, a large one in a worker thread. Whole-body
problems are 4xx with a precise message and nothing produced; per-event problems are listed
in the 202 and the events go to the DLQ. On shutdown (SIGTERM) uvicorn stops taking
requests, and the lifespan flushes the producer; what the broker has not taken within the
grace period is journaled and delivered at the next start (``journal.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from eventplatform.collect.customers import AuthBusy, CachedAuthenticator, CustomerStore
from eventplatform.collect.intake import (
    BodyError,
    BufferFull,
    Intake,
    IntakeResult,
    TooLarge,
    producer_limits,
)
from eventplatform.collect.journal import DeliveryJournal, producer_settings
from eventplatform.collect.metrics import Metrics
from eventplatform.collect.openapi import openapi_document
from eventplatform.collect.quotas import Quotas
from eventplatform.kafka.clients import make_producer
from eventplatform.settings import Settings, get_settings

log = logging.getLogger("eventplatform.collect")


# Validation and encoding are pure Python: under the GIL a worker thread adds no parallelism,
# only thread switches and GIL handoffs (they cost more CPU than the work at 100 events a
# request, and stretch latency). So a usual batch is taken on the event loop (about 1 ms per
# 100 events); a large one, or one that may have to wait for room in the producer's buffer,
# goes to a thread so that the loop keeps answering.
INLINE_MAX_EVENTS = 1000
# An uncompressed body up to this size (a few 100 events; under 1 ms of parsing) is read and
# parsed on the event loop too, events counted before any is built. A larger or
# gzip one, whose inflating and parsing may take 100s of ms, waits for its customer's turn
# and a worker thread (Admission): one customer's large bodies never hold the loop.
INLINE_MAX_BODY_BYTES = 64 * 1024
EVENTS_PATH = "/v1/events"
# The delivery reports are served by the event loop while it produces batches; the poller
# thread takes over when it has not for this long (``Collector._poll``).
POLL_HANDOFF_S = 0.01


class Refused(Exception):
    """A request refused before its work: the status, the message, the headers."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


class Admission:
    """Bounds on the heavy work (gzip or large bodies) per customer and overall.

    A request first waits for its customer's turn (``per_customer`` at once), then reads its
    body, then waits for a worker's turn (``overall`` at once, all customers) to inflate,
    parse and validate it in a thread. A customer over its share waits behind its own
    requests only; one that uploads slowly holds its own turn, not a worker's; usual small
    batches do not queue at all. A request waiting for its customer's turn has not read its
    body (little memory); beyond ``queue`` of them the answer is 429 at once, and a turn not
    given in ``wait_s`` is 503.
    """

    def __init__(self, overall: int, per_customer: int, queue: int, wait_s: float) -> None:
        self.overall = asyncio.Semaphore(overall)
        self.per_customer, self.queue, self.wait_s = per_customer, queue, wait_s
        self._mine: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def customer_turn(self, customer: str) -> AsyncIterator[None]:
        mine = self._mine.setdefault(customer, asyncio.Semaphore(self.per_customer))
        waiting = self._waiting.get(customer, 0)
        if waiting >= self.queue:
            raise Refused(
                429,
                f"{customer} has {waiting} large or gzip requests waiting already; "
                "nothing was accepted",
                **{"Retry-After": "1"},
            )
        self._waiting[customer] = waiting + 1
        counted = True
        try:
            async with _acquired(mine, self.wait_s):
                self._waiting[customer] -= 1
                counted = False
                yield
        finally:
            if counted:
                self._waiting[customer] -= 1

    def worker_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return _acquired(self.overall, self.wait_s)


@contextlib.asynccontextmanager
async def _acquired(semaphore: asyncio.Semaphore, timeout_s: float) -> AsyncIterator[None]:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout_s)
    except TimeoutError:
        raise Refused(
            503, "the collector is busy with large requests; retry later", **{"Retry-After": "2"}
        ) from None
    try:
        yield
    finally:
        semaphore.release()


class Collector:
    """The state one worker process holds: producer, quotas, keys, metrics."""

    def __init__(self, settings: Settings) -> None:
        c, k = settings.collector, settings.kafka
        self.settings = settings
        self.metrics = Metrics()
        max_bytes = c.producer_max_mib * 2**20
        self.producer = make_producer(
            k.bootstrap,
            **producer_limits(c.producer_max_messages, max_bytes),
            **{"linger.ms": c.producer_linger_ms},
            **producer_settings(c.delivery_timeout_s),
        )
        self.intake = Intake(
            self.producer,
            k.raw_topic,
            k.overflow_topic,
            k.dlq_topic,
            Quotas(c.rate_per_s, c.burst, c.hard_cap_per_s, c.hard_cap_burst),
            self.metrics,
            c.producer_max_messages,
            max_buffered_bytes=max_bytes,
            policy=settings.event_policy,
            max_event_bytes=c.max_event_bytes,
            dlq_max_value_bytes=c.dlq_max_value_bytes,
            native=c.native_intake,
        )
        self.authenticate = CachedAuthenticator(
            CustomerStore(settings.customers_db),
            c.key_cache_s,
            c.auth_negative_cache_size,
            c.auth_max_pending_lookups,
        )
        self.admission: Admission | None = None  # made on the event loop (lifespan)
        self.sync_waits: dict[str, int] = {}
        # Accepted means delivered: what the broker does not take is kept, never dropped.
        self.journal = DeliveryJournal(settings.collector_journal_dir, self.producer, self.metrics)
        self.intake.keep = self.journal.keep
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)
        self._poller.start()
        self.journal.replay_in_background()

    def buffer_has_room(self) -> bool:
        """Half the producer's buffer free: producing a small batch will not have to wait."""
        return len(self.producer) < self.settings.collector.producer_max_messages // 2

    def _poll(self) -> None:
        """Serve delivery reports while requests do not, and let the journal write what it
        kept (outside the callbacks).

        Each report takes the GIL: served here while the event loop runs Python, every one
        waits for the loop to hand the GIL over (up to the 5 ms switch interval), so under
        load the reports fell behind, the buffer looked full (requests went to threads) and
        the handovers cost CPU. So while requests keep coming, the loop serves them after
        each batch it produces (``Intake.accept``), and this thread only when the loop has
        not polled for ``POLL_HANDOFF_S``."""
        intake = self.intake
        while not self._stop.is_set():
            quiet = time.monotonic() - intake.polled_at
            if quiet >= POLL_HANDOFF_S:
                self.producer.poll(POLL_HANDOFF_S)
            else:
                self._stop.wait(POLL_HANDOFF_S - quiet)
            try:
                self.journal.maintain()
            except OSError:  # a full disk: what was kept stays in memory, tried again
                log.exception("the journal could not be written")
                time.sleep(1)

    def close(self, timeout_s: float | None = None) -> int:
        """Flush what was accepted for up to ``EP_COLLECTOR_SHUTDOWN_FLUSH_S``; what the
        broker has not taken by then goes to the journal, delivered at the next start.
        Returns the messages neither delivered nor journaled (0 unless the disk failed)."""
        self._stop.set()
        self._poller.join(timeout=5)
        if timeout_s is None:
            timeout_s = self.settings.collector.shutdown_flush_s
        lost = self.journal.close(timeout_s)
        if lost:
            log.error("%d accepted messages neither delivered nor journaled", lost)
        return lost


class Answer:
    """A response as Starlette's JSONResponse would send it (same status line, headers and
    bytes), without a Response object: the events endpoint is a plain ASGI app."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Starlette's order: the answer's own headers (lower-cased), then the length and
        the type."""
        headers = self.headers or {}
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append((b"content-type", b"application/json"))
        return raw


def _events_answer(payload: dict[str, Any], status: int) -> Answer:
    """The same compact JSON as Starlette's, rendered by orjson (a 202 lists 100s of ids)."""
    return Answer(status, orjson.dumps(payload))


def _error(status: int, message: str, **headers: str) -> Answer:
    """``{"error": message}`` rendered as Starlette's JSONResponse renders it."""
    body = json.dumps(
        {"error": message}, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
    return Answer(status, body, headers or None)


class _Disconnected(Exception):
    """The client went away before its body was read: nothing to answer."""


class Incoming:
    """What POST /v1/events reads of a request: its headers (the first value of each name,
    as Starlette's ``Headers.get``), the ``?sync`` flag (the last value, as its
    ``QueryParams``) and the body."""

    __slots__ = ("_headers", "_receive", "query")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name not in headers:
                headers[name] = value
        self._headers, self._receive, self.query = headers, receive, scope["query_string"]

    def header(self, name: bytes) -> str | None:
        value = self._headers.get(name)
        return None if value is None else value.decode("latin-1")

    def sync(self) -> bool:
        if not self.query:
            return False
        value = ""
        for key, each in parse_qsl(self.query.decode("latin-1"), keep_blank_values=True):
            if key == "sync":
                value = each
        return value.lower() in ("1", "true", "yes")

    async def read_body(self, limit: int) -> bytes:
        declared = self.header(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"body of {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"body over the limit of {limit} bytes")
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
            elif message["type"] == "http.disconnect":
                raise _Disconnected


_INTERNAL_ERROR = (
    b"Internal Server Error",
    [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")],
)


class EventsEndpoint:
    """POST /v1/events as a plain ASGI app.

    Starlette's routing, middleware, Request and Response objects were a tenth of the event
    loop's time at 100,000 events/s; this endpoint reads the scope itself and sends what
    Starlette would have sent (an unexpected error is a plain 500 and is raised on, as its
    ServerErrorMiddleware does). The public app routes POST /v1/events here directly; the
    Starlette route stays for everything else about the path (405 for another method)."""

    def __init__(self) -> None:
        self.collector: Collector | None = None  # set by the lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        collector = self.collector
        assert collector is not None
        started = False
        try:
            answer = await post_events(Incoming(scope, receive), collector)
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": answer.raw_headers(),
                }
            )
            await send({"type": "http.response.body", "body": answer.body})
        except _Disconnected:
            return
        except Exception:
            if not started:
                body, headers = _INTERNAL_ERROR
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            raise


class PublicApp:
    """The public listener: POST /v1/events straight to its endpoint, the rest (and the
    lifespan) to the Starlette app."""

    def __init__(self, app: Starlette, events: EventsEndpoint) -> None:
        self.app, self.events = app, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == EVENTS_PATH:
            await self.events(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@contextlib.contextmanager
def _sync_slot(collector: Collector, customer: str, sync: bool) -> Iterator[None]:
    """One of the customer's ?sync=true waits, or 429 before anything is read: a sync
    request holds its connection for up to EP_COLLECTOR_SYNC_TIMEOUT_S."""
    if not sync:
        yield
        return
    cap = collector.settings.collector.sync_max_per_customer
    waits = collector.sync_waits.get(customer, 0)
    if waits >= cap:
        raise Refused(
            429,
            f"{customer} has {waits} ?sync=true requests waiting for the broker (the limit "
            f"is {cap}); nothing was accepted",
            **{"Retry-After": "1"},
        )
    collector.sync_waits[customer] = waits + 1
    try:
        yield
    finally:
        collector.sync_waits[customer] -= 1


async def post_events(request: Incoming, collector: Collector) -> Answer:
    metrics = collector.metrics

    def answer(response: Answer) -> Answer:
        metrics.inc("collector_requests_total", status=str(response.status))
        return response

    auth = request.header(b"authorization") or ""
    scheme, _, api_key = auth.partition(" ")
    try:
        customer = (
            await collector.authenticate(api_key.strip()) if scheme.lower() == "bearer" else None
        )
    except AuthBusy as exc:
        return answer(
            _error(503, f"too many keys being checked ({exc}); retry later", **{"Retry-After": "1"})
        )
    if customer is None:
        return answer(
            _error(
                401,
                "missing, unknown or revoked API key (Authorization: Bearer <key>)",
                **{"WWW-Authenticate": "Bearer"},
            )
        )
    sync = request.sync()
    try:
        with _sync_slot(collector, customer, sync):
            return answer(await _take(request, collector, customer, sync))
    except Refused as exc:
        return answer(_error(exc.status, str(exc), **exc.headers))


async def _take(request: Incoming, collector: Collector, customer: str, sync: bool) -> Answer:
    """Read, check and produce one request's batch: small ones on the loop, the rest in a
    worker thread in the customer's turn."""
    encoding = (request.header(b"content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "", "gzip"):
        return _error(415, f"Content-Encoding {encoding} is not supported (gzip is)")
    gzip = encoding == "gzip"
    declared = request.header(b"content-length") or ""
    limit = collector.settings.collector.max_body_bytes
    if declared.isdigit() and int(declared) > limit:  # refused before any turn is waited for
        return _error(413, f"body of {declared} bytes; the limit is {limit}; nothing was accepted")
    small = not gzip and declared.isdigit() and int(declared) <= INLINE_MAX_BODY_BYTES
    if small:
        taken = await _batch(request, collector, customer, sync, gzip, inline=True)
    else:
        assert collector.admission is not None
        async with collector.admission.customer_turn(customer):
            taken = await _batch(request, collector, customer, sync, gzip, inline=False)
    if isinstance(taken, Answer):
        return taken
    payload, result = taken
    status = 202
    if sync and result.delivery is not None:  # out of the turn: a wait takes no one's turn
        try:  # no thread held: the delivery callback completes the future
            await asyncio.wait_for(
                result.delivery.future(), collector.settings.collector.sync_timeout_s
            )
            done = True
        except TimeoutError:
            done = False
        payload["delivery"] = {
            "complete": done,
            "failed": result.delivery.failed,
            "pending": max(0, result.delivery.pending),
        }
        if not done:
            status = 504
        elif result.delivery.failed:
            status = 502
    return _events_answer(payload, status)


async def _batch(
    request: Incoming, collector: Collector, customer: str, sync: bool, gzip: bool, inline: bool
) -> Answer | tuple[dict[str, Any], IntakeResult]:
    """The batch read, checked and produced: its answer's payload and the intake's result,
    or the error answer (nothing kept). A large one in a worker's turn, once read."""
    c = collector.settings.collector
    try:
        body = await request.read_body(c.max_body_bytes)
    except TooLarge as exc:
        return _error(413, f"{exc}; nothing was accepted")
    checksum = request.header(b"x-content-sha256")
    if checksum is not None and hashlib.sha256(body).hexdigest() != checksum.strip().lower():
        return _error(400, "X-Content-SHA256 does not match the body as sent; nothing was accepted")
    content_type = request.header(b"content-type") or ""
    if inline:
        return await _work(collector, customer, body, gzip, content_type, sync, inline)
    assert collector.admission is not None
    async with collector.admission.worker_turn():
        return await _work(collector, customer, body, gzip, content_type, sync, inline)


async def _work(
    collector: Collector,
    customer: str,
    body: bytes,
    gzip: bool,
    content_type: str,
    sync: bool,
    inline: bool,
) -> Answer | tuple[dict[str, Any], IntakeResult]:
    c = collector.settings.collector
    read = (c.max_decompressed_bytes, c.max_events_per_request, c.max_event_bytes)
    try:
        if inline:
            pairs = collector.intake.read(customer, body, gzip, content_type, *read)
        else:
            pairs = await run_in_threadpool(
                collector.intake.read, customer, body, gzip, content_type, *read
            )
        del body
    except TooLarge as exc:
        return _error(413, f"{exc}; nothing was accepted")
    except BodyError as exc:
        return _error(400, f"{exc}; nothing was accepted")

    if collector.journal.producer_failed:  # it would only journal: nothing gets delivered
        return _error(
            503,
            f"the collector's producer failed for good ({collector.journal.producer_failed}); "
            "nothing was accepted: it takes events again once restarted",
        )
    decision = collector.intake.quotas.decide(customer, len(pairs))
    if not decision.allowed:
        return _error(
            429,
            f"{customer} is over its hard cap of {c.hard_cap_per_s:g} "
            "events/s; nothing was accepted",
            **{"Retry-After": str(decision.retry_after_s)},
        )
    try:
        accept = (customer, pairs, decision.to_raw, sync)
        if inline and len(pairs) <= INLINE_MAX_EVENTS and collector.buffer_has_room():
            result = collector.intake.accept(*accept)
        else:
            result = await run_in_threadpool(collector.intake.accept, *accept)
    except BufferFull as exc:
        collector.metrics.inc("collector_buffer_full_total")
        return _error(
            503,
            f"the platform is busy ({exc}); retry later",
            **{"Retry-After": str(c.retry_after_s)},
        )
    payload = {
        "customer_id": customer,
        "received": len(pairs),
        "accepted": result.accepted,
        "overflowed": result.overflowed,
        "rejected": [{"index": r.index, "errors": r.errors} for r in result.rejected],
        "event_ids": result.event_ids,
    }
    return payload, result


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    collector: Collector = request.app.state.collector

    def broker_up() -> bool:
        try:
            return bool(collector.producer.list_topics(timeout=2).brokers)
        except Exception:
            return False

    if collector.journal.producer_failed:
        failed = collector.journal.producer_failed
        return JSONResponse({"status": f"producer failed: {failed}"}, status_code=503)
    if await run_in_threadpool(broker_up):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "broker unreachable"}, status_code=503)


async def metrics_endpoint(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    c = collector.settings.collector
    collector.metrics.set_gauge("collector_producer_buffer_messages", len(collector.producer))
    collector.metrics.set_gauge(
        "collector_producer_buffer_fill", len(collector.producer) / c.producer_max_messages
    )
    collector.metrics.set_gauge("collector_producer_buffer_bytes", collector.intake.buffered_bytes)
    auth = collector.authenticate
    collector.metrics.set_gauge("collector_auth_unknown_keys_cached", auth.unknown_cached)
    collector.metrics.set_gauge("collector_auth_lookups", auth.lookups)
    collector.metrics.set_gauge("collector_sync_waits", sum(collector.sync_waits.values()))
    return PlainTextResponse(collector.metrics.render(), media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


class _AdminServer(uvicorn.Server):
    """The admin listener, served on the worker's own loop beside the public one: signals
    stay the public server's (it stops taking requests, then the lifespan stops this)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _admin_socket(host: str, port: int) -> socket.socket:
    """The admin listener's socket. SO_REUSEPORT: with EP_COLLECTOR_WORKERS=N each worker
    binds it and a scrape is answered by one of them, as the public port did before."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def admin_app(collector: Collector) -> Starlette:
    """/metrics (customer names and volumes), /readyz (a broker call per hit) and
    /openapi.json: operations only, never on the public listener."""
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/openapi.json", openapi),
        ]
    )
    app.state.collector = collector
    return app


def create_app(settings: Settings | None = None) -> PublicApp:
    """The ASGI app (uvicorn's factory: one Collector per worker process). Its lifespan
    also serves the admin app on EP_COLLECTOR_ADMIN_HOST:EP_COLLECTOR_ADMIN_PORT."""
    settings = settings or get_settings()
    platform_log = logging.getLogger("eventplatform")
    if not platform_log.handlers:  # each uvicorn worker process logs like uvicorn does
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        platform_log.addHandler(handler)
        platform_log.setLevel(logging.INFO)
    events = EventsEndpoint()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        c = settings.collector
        collector = app.state.collector = events.collector = Collector(settings)
        collector.admission = Admission(
            c.heavy_concurrency, c.heavy_per_customer, c.heavy_queue_per_customer, c.heavy_wait_s
        )
        app.state.started = time.time()
        admin = _AdminServer(
            uvicorn.Config(admin_app(collector), lifespan="off", log_config=None, access_log=False)
        )
        serving = asyncio.create_task(admin.serve([_admin_socket(c.admin_host, c.admin_port)]))
        log.info("admin listener (/metrics, /readyz) on http://%s:%d", c.admin_host, c.admin_port)
        try:
            yield
        finally:
            admin.should_exit = True
            await serving
            collector.authenticate.close()
            await run_in_threadpool(collector.close)

    app = Starlette(
        routes=[
            Route(EVENTS_PATH, events, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )
    return PublicApp(app, events)
