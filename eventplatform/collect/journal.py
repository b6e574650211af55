"""Accepted means delivered: what the producer could not hand to the broker is kept on disk.

The collector's producer has no delivery timeout (``EP_COLLECTOR_DELIVERY_TIMEOUT_S`` 0), so
an accepted event waits in its buffer until the broker takes it, and the intake's room check
answers 503 once the buffer is full. A message leaves the buffer without an acknowledgement
in three ways, none of them a loss:

* a retriable failure (a delivery timeout, if one is set) is produced again at once;
* at shutdown, what the broker has not taken within ``EP_COLLECTOR_SHUTDOWN_FLUSH_S`` is
  purged and written to a journal file (written aside, fsynced, renamed into place); the next
  collector, or ``eventplatform replay``, to start produces it again, and deletes the file
  once every message of it is acknowledged (or journaled again);
* a permanent failure (the broker refuses the message itself) is written to ``failed/``,
  counted (``collector_delivery_failures_total``) and logged: it would fail again, so it is
  not replayed by itself (move the file up one folder to replay it after a fix).

Duplicates: a message purged while in flight may have been written by the broker before it
went away; its replay is then a second copy (the same bytes, so the same ``event_id``) at
another offset. Journal records say whether they were in flight, and the replay counts them
(``collector_journal_replayed_total{maybe_duplicate="true"}``).

Several collector processes (workers) may share the folder: a journal file is replayed by the
one process that holds its ``flock`` (released by the kernel if that process dies).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from eventplatform.collect.metrics import Metrics
from eventplatform.files import fsync_folder

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]

_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
_RETRIABLE = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
}


class JournalError(ValueError):
    """A journal file that cannot be read back (it is moved to failed/, never deleted)."""


@dataclass(frozen=True)
class Record:
    """One message as it was produced, enough to produce it again."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]] | None
    timestamp_ms: int
    in_flight: bool = False  # purged while sent: the broker may have written it
    error: str = ""

    @classmethod
    def of(cls, msg: Message, err: KafkaError | None) -> Record:
        _, ts = msg.timestamp()
        return cls(
            msg.topic(),
            msg.key(),
            msg.value() or b"",
            list(msg.headers()) if msg.headers() else None,
            ts if ts > 0 else 0,
            in_flight=err is not None and err.code() == KafkaError._PURGE_INFLIGHT,
            error=str(err) if err is not None else "",
        )

    def to_json(self) -> bytes:
        def b64(data: bytes | None) -> str | None:
            return None if data is None else base64.b64encode(data).decode()

        return orjson.dumps(
            {
                "topic": self.topic,
                "key": b64(self.key),
                "value": b64(self.value),
                "headers": None
                if self.headers is None
                else [[name, b64(value)] for name, value in self.headers],
                "timestamp_ms": self.timestamp_ms,
                "in_flight": self.in_flight,
                "error": self.error,
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> Record:
        def unb64(text: str | None) -> bytes | None:
            return None if text is None else base64.b64decode(text)

        d = orjson.loads(line)
        return cls(
            d["topic"],
            unb64(d["key"]),
            unb64(d["value"]) or b"",
            None if d["headers"] is None else [(n, unb64(v)) for n, v in d["headers"]],
            int(d["timestamp_ms"]),
            bool(d["in_flight"]),
            d.get("error", ""),
        )


def write_journal(folder: Path, records: list[Record]) -> Path:
    """``records`` in a new file of ``folder``, durably: written aside, fsynced, renamed into
    place, the folder fsynced. A reader never sees a partial file."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.journal"
    aside = folder / f".{name}.tmp"
    with open(aside, "wb") as f:
        for record in records:
            f.write(record.to_json() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(aside, folder / name)
    fsync_folder(folder)
    return folder / name


def read_journal(handle: IO[bytes], name: str) -> list[Record]:
    records = []
    for number, line in enumerate(handle, 1):
        if line.strip():
            try:
                records.append(Record.from_json(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise JournalError(f"{name} line {number}: {exc}") from None
    return records


def retriable(err: KafkaError) -> bool:
    return err.code() in _RETRIABLE or (err.retriable() and err.code() not in _PURGED)


@dataclass
class _Replay:
    """A journal file being replayed, locked by this process until it is deleted."""

    path: Path
    handle: IO[bytes]
    records: list[Record]
    produced: int = 0
    outstanding: int = 0  # produced, delivery not reported yet
    done: bool = field(default=False)

    @property
    def finished(self) -> bool:
        return self.produced == len(self.records) and self.outstanding == 0


class DeliveryJournal:
    """The producer's safety net: the intake's hook for undelivered messages (``keep``), the
    replay of earlier journals, and the shutdown that journals what the broker did not take.

    ``maintain`` must be called regularly (the collector's poll thread does, after each
    poll): it writes what was kept and deletes replayed files, outside the delivery
    callbacks, which only append to lists."""

    def __init__(self, folder: Path, producer: Producer, metrics: Metrics) -> None:
        self.folder, self.failed_folder = folder, folder / "failed"
        self.producer, self.metrics = producer, metrics
        self._lock = threading.Lock()  # the lists and the replays' counts
        self._maintaining = threading.Lock()  # one writer at a time (poll thread, close)
        self._closing = threading.Event()
        self._purged: list[Record] = []  # to a journal: replayed at the next start
        self._failed: list[Record] = []  # refused for good: to failed/
        self._again: list[tuple[Record, DeliveryCallback]] = []  # produce again (BufferError)
        self._replays: list[_Replay] = []
        self._replayer: threading.Thread | None = None
        # Set once librdkafka reports a fatal error (e.g. the idempotent producer's
        # sequence broke): the producer delivers nothing more, so the collector must stop
        # accepting (503) and say so on /readyz rather than journal every request.
        self.producer_failed: str | None = None

    # -- delivery reports ---------------------------------------------------------------

    def keep(self, err: KafkaError, msg: Message, callback: DeliveryCallback) -> bool:
        """A message was not delivered: produce it again (True: it is in the buffer again,
        with ``callback``), or keep it for a journal (False). Never drops it."""
        record = Record.of(msg, err)
        customer = (msg.key() or b"").decode(errors="replace")
        code = err.code()
        if code in _PURGED or code == KafkaError._FATAL or self._closing.is_set():
            if code == KafkaError._FATAL:
                if self.producer_failed is None:
                    log.critical("the producer failed for good (%s): restart the collector", err)
                self.producer_failed = str(err)
            with self._lock:
                self._purged.append(record)
            return False
        if retriable(err):
            self.metrics.inc("collector_delivery_retried_total", customer=customer)
            try:
                self._produce(record, callback)
            except BufferError:
                with self._lock:
                    self._again.append((record, callback))
            return True
        self.metrics.inc("collector_delivery_failures_total", customer=customer)
        log.error(
            "the broker refused a message of %s to %s for good (%s): kept in %s",
            customer,
            msg.topic(),
            err,
            self.failed_folder,
        )
        with self._lock:
            self._failed.append(record)
        return False

    def _produce(self, record: Record, callback: DeliveryCallback) -> None:
        self.producer.produce(
            record.topic,
            key=record.key,
            value=record.value,
            headers=record.headers,
            timestamp=record.timestamp_ms,
            on_delivery=callback,
        )

    # -- replay of earlier journals -------------------------------------------------------

    def replay_in_background(self) -> None:
        """Produce the journals left by earlier processes, while this one serves."""
        for aside in self.folder.glob(".*.tmp"):
            log.warning("%s: a journal whose writing did not finish (left alone)", aside)
        self._replayer = threading.Thread(target=self._replay_all, name="journal-replay")
        self._replayer.start()

    def _replay_all(self) -> None:
        for path in sorted(self.folder.glob("*.journal")):
            if self._closing.is_set():
                return
            replay = self._claim(path)
            if replay is None:
                continue
            maybe_duplicates = sum(r.in_flight for r in replay.records)
            log.info(
                "replaying %d messages from %s (%d were in flight when purged: maybe "
                "delivered already, then duplicated now)",
                len(replay.records),
                path,
                maybe_duplicates,
            )
            with self._lock:
                self._replays.append(replay)
            for record in replay.records:
                callback = partial(self._replayed, replay, record.in_flight)
                while True:
                    if self._closing.is_set():
                        return
                    with self._lock:
                        replay.outstanding += 1
                    try:
                        self._produce(record, callback)
                    except BufferError:  # the buffer is full: wait for the broker
                        with self._lock:
                            replay.outstanding -= 1
                        time.sleep(0.1)
                        continue
                    with self._lock:
                        replay.produced += 1
                    break

    def _claim(self, path: Path) -> _Replay | None:
        """The file, locked and read, unless another process replays it (or has deleted it)."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 (held, locked, until the file is deleted)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if not path.exists():  # replayed and deleted by another process since we opened it
            handle.close()
            return None
        try:
            return _Replay(path, handle, read_journal(handle, str(path)))
        except JournalError as exc:
            self.failed_folder.mkdir(parents=True, exist_ok=True)
            os.rename(path, self.failed_folder / path.name)
            handle.close()
            log.error("a journal that does not read back, moved to failed/: %s", exc)
            self.metrics.inc("collector_journal_unreadable_total")
            return None

    def _replayed(
        self, replay: _Replay, in_flight: bool, err: KafkaError | None, msg: Message
    ) -> None:
        if err is None:
            self.metrics.inc(
                "collector_journal_replayed_total", maybe_duplicate=str(in_flight).lower()
            )
        elif self.keep(err, msg, partial(self._replayed, replay, in_flight)):
            return  # produced again: still outstanding
        with self._lock:  # (after ``keep`` appended it: ``maintain`` writes it first)
            replay.outstanding -= 1

    # -- writing, deleting ----------------------------------------------------------------

    def maintain(self) -> None:
        """Write what was kept, produce again what did not fit, delete finished replays."""
        with self._maintaining:
            with self._lock:
                purged, self._purged = self._purged, []
                failed, self._failed = self._failed, []
                again, self._again = self._again, []
                finished = [r for r in self._replays if r.finished and not r.done]
            for record, callback in again:
                try:
                    self._produce(record, callback)
                except BufferError:
                    with self._lock:
                        self._again.append((record, callback))
            if failed:
                path = self._write(self.failed_folder, failed, self._failed)
                log.error("%d messages refused by the broker for good: in %s", len(failed), path)
            if purged:
                path = self._write(self.folder, purged, self._purged)
                in_flight = sum(r.in_flight for r in purged)
                self.metrics.inc("collector_journal_written_total", len(purged))
                log.warning(
                    "%d messages the broker did not take are in %s (%d were in flight: maybe "
                    "delivered, then duplicated by the replay); delivered at the next start",
                    len(purged),
                    path,
                    in_flight,
                )
            for replay in finished:  # every message acknowledged, or in a journal written above
                replay.path.unlink(missing_ok=True)
                fsync_folder(self.folder)
                replay.handle.close()
                replay.done = True
                log.info("%s replayed: every message acknowledged or journaled", replay.path)
            if finished:
                with self._lock:
                    self._replays = [r for r in self._replays if not r.done]

    def _write(self, folder: Path, records: list[Record], pending: list[Record]) -> Path:
        """``write_journal``; if it fails (a full disk), the records go back to ``pending``
        for the next try: kept in memory, not lost."""
        try:
            return write_journal(folder, records)
        except OSError:
            with self._lock:
                pending[:0] = records
            raise

    def close(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for the broker to take the buffer, then journal the rest.
        Returns how many messages are neither delivered nor journaled (0, unless writing the
        journal failed: then that is logged as an error)."""
        self._closing.set()
        if self._replayer is not None:
            self._replayer.join()
        remaining = self.producer.flush(grace_s)
        if remaining:
            log.warning(
                "%d messages not taken by the broker in %gs: writing them to the journal",
                remaining,
                grace_s,
            )
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(10)  # serves the purged messages' delivery reports
        with self._lock:  # what the replays had not produced yet goes to the new journal
            for replay in self._replays:
                self._purged.extend(replay.records[replay.produced :])
                replay.produced = len(replay.records)
        try:
            self.maintain()
        except OSError:
            with self._lock:
                lost = len(self._purged) + len(self._failed) + len(self.producer)
            log.exception("%d undelivered messages could not be journaled", lost)
            return lost
        for replay in self._replays:  # (only if a delivery report never came)
            log.error("%s kept: %d of its messages unaccounted", replay.path, replay.outstanding)
            replay.handle.close()
        if remaining == 0:
            log.info("producer flushed: every accepted event reached the broker")
        return len(self.producer)


def producer_settings(delivery_timeout_s: float) -> dict[str, Any]:
    """The durable producer's overrides: no delivery timeout unless one is set."""
    return {"message.timeout.ms": int(delivery_timeout_s * 1000)}
