"""The collector's HTTP API (Starlette): POST /v1/events and the operational endpoints.

Answers fast: the response does not wait for the broker unless ``?sync=true``; a usual batch
is validated and produced on the event loop, a large one in a worker thread. Whole-body
problems are 4xx with a precise message and nothing produced; per-event problems are listed
in the 202 and the events go to the DLQ. On shutdown (SIGTERM) uvicorn stops taking
requests, and the lifespan flushes the producer; what the broker has not taken within the
grace period is journaled and delivered at the next start (``journal.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import zlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from eventplatform.collect.customers import CachedAuthenticator, CustomerStore
from eventplatform.collect.intake import (
    BodyError,
    BufferFull,
    Intake,
    parse_body,
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


class _BodyTooLarge(Exception):
    pass


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
        )
        self.authenticate = CachedAuthenticator(CustomerStore(settings.customers_db), c.key_cache_s)
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
        """Serve delivery callbacks while requests do not (they only produce), and let the
        journal write what it kept (outside the callbacks)."""
        while not self._stop.is_set():
            self.producer.poll(0.1)
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


class _EventsAnswer(JSONResponse):
    """The same compact JSON as Starlette's, rendered by orjson (a 202 lists 100s of ids)."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"body of {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(f"Content-Encoding gzip, but the body is not gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _BodyTooLarge(f"body over {limit} bytes once decompressed")
    if not inflater.eof:
        raise BodyError("gzip body is truncated")
    return out


async def post_events(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    c = collector.settings.collector
    metrics = collector.metrics

    def answer(response: Response) -> Response:
        metrics.inc("collector_requests_total", status=str(response.status_code))
        return response

    auth = request.headers.get("authorization", "")
    scheme, _, api_key = auth.partition(" ")
    customer = collector.authenticate(api_key.strip()) if scheme.lower() == "bearer" else None
    if customer is None:
        return answer(
            _error(
                401,
                "missing, unknown or revoked API key (Authorization: Bearer <key>)",
                **{"WWW-Authenticate": "Bearer"},
            )
        )
    try:
        body = await _read_body(request, c.max_body_bytes)
        checksum = request.headers.get("x-content-sha256")
        if checksum is not None and hashlib.sha256(body).hexdigest() != checksum.strip().lower():
            return answer(
                _error(
                    400, "X-Content-SHA256 does not match the body as sent; nothing was accepted"
                )
            )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body, c.max_decompressed_bytes)
        elif encoding not in ("identity", ""):
            return answer(_error(415, f"Content-Encoding {encoding} is not supported (gzip is)"))
        pairs = parse_body(body, request.headers.get("content-type", ""), c.max_events_per_request)
    except _BodyTooLarge as exc:
        return answer(_error(413, str(exc)))
    except BodyError as exc:
        return answer(_error(400, f"{exc}; nothing was accepted"))

    decision = collector.intake.quotas.decide(customer, len(pairs))
    if not decision.allowed:
        return answer(
            _error(
                429,
                f"{customer} is over its hard cap of {c.hard_cap_per_s:g} "
                "events/s; nothing was accepted",
                **{"Retry-After": str(decision.retry_after_s)},
            )
        )
    sync = request.query_params.get("sync", "").lower() in ("1", "true", "yes")
    try:
        accept = (customer, pairs, decision.to_raw, sync)
        if len(pairs) <= INLINE_MAX_EVENTS and collector.buffer_has_room():
            result = collector.intake.accept(*accept)
        else:
            result = await run_in_threadpool(collector.intake.accept, *accept)
    except BufferFull as exc:
        metrics.inc("collector_buffer_full_total")
        return answer(
            _error(
                503,
                f"the platform is busy ({exc}); retry later",
                **{"Retry-After": str(c.retry_after_s)},
            )
        )
    payload = {
        "customer_id": customer,
        "received": len(pairs),
        "accepted": result.accepted,
        "overflowed": result.overflowed,
        "rejected": [{"index": r.index, "errors": r.errors} for r in result.rejected],
        "event_ids": result.event_ids,
    }
    status = 202
    if sync and result.delivery is not None:
        done = await run_in_threadpool(result.delivery.wait, c.sync_timeout_s)
        payload["delivery"] = {
            "complete": done,
            "failed": result.delivery.failed,
            "pending": max(0, result.delivery.pending),
        }
        if not done:
            status = 504
        elif result.delivery.failed:
            status = 502
    return answer(_EventsAnswer(payload, status_code=status))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    collector: Collector = request.app.state.collector

    def broker_up() -> bool:
        try:
            return bool(collector.producer.list_topics(timeout=2).brokers)
        except Exception:
            return False

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
    return PlainTextResponse(collector.metrics.render(), media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app (uvicorn's factory: one Collector per worker process)."""
    settings = settings or get_settings()
    platform_log = logging.getLogger("eventplatform")
    if not platform_log.handlers:  # each uvicorn worker process logs like uvicorn does
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        platform_log.addHandler(handler)
        platform_log.setLevel(logging.INFO)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.collector = Collector(settings)
        app.state.started = time.time()
        yield
        await run_in_threadpool(app.state.collector.close)

    return Starlette(
        routes=[
            Route("/v1/events", post_events, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/openapi.json", openapi),
        ],
        lifespan=lifespan,
    )
