"""Handing a landed batch back to Kafka, and which Kafka errors end a landing run.

The offsets of a batch are committed only once both sinks hold it and the broker holds every
one of its dead letters; the commit rides out a coordinator that moves or a broker that
restarts, because the sinks already hold the batch and waiting is cheaper than a replay.
While reading, librdkafka reports transient errors and retries them itself: a run fails only
on what will not heal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from eventplatform.kafka.dlq import DEFAULT_MAX_VALUE_BYTES, DeadLetter, send_dead_letter

Log = Callable[[str], None]

_FATAL_CODES = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.OFFSET_OUT_OF_RANGE,
}

_RETRIABLE_COMMIT = {
    KafkaError._WAIT_COORD,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}

# The client could not reach the group's coordinator (see ``OffsetCommitter``)
_COORDINATOR_LOST = {
    KafkaError._WAIT_COORD,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def send_dead_letters(
    producer: Producer,
    dlq_topic: str,
    letters: list[DeadLetter],
    timeout_s: float,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> None:
    """Produce and wait for each letter's delivery report: the offsets are committed only
    once the broker holds every one. An empty queue after ``flush()`` is not enough: a
    message the broker refused (too large, no such topic) leaves the queue as well. Each
    letter keeps at most ``max_value_bytes`` of its original (``DeadLetter.truncate``)."""
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for letter in letters:
        while True:
            try:
                send_dead_letter(
                    producer,
                    dlq_topic,
                    letter.truncate(max_value_bytes),
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the producer's queue is full: let it drain
                producer.poll(0.5)
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise RuntimeError(
            f"{remaining + len(failures)} of {len(letters)} dead letters not acknowledged "
            f"by the broker ({'; '.join(sorted(set(failures))[:3]) or 'timed out'}); "
            "the batch is not committed and will be replayed"
        )


class OffsetCommitter:
    """Commits a landing run's offsets through a client of its own, each try bounded in time.

    The sinks already hold the batch, so waiting out a coordinator that moves or a broker that
    restarts is cheaper than failing (which would replay it); past the call's ``timeout_s``
    the run fails and the next one replays.

    Two ways a librdkafka client was seen to lose the group's coordinator for good across a
    broker restart (librdkafka issue 5511), while a new client found it at once: every commit
    erred ``_WAIT_COORD`` after 60 s, or a synchronous commit never returned at all. So each
    try runs in a thread and is given ``attempt_timeout_s``; a client that lost its
    coordinator or did not answer in time is dropped and a new one of the group
    (``new_client``) tries next, and stays for the later commits. Landing consumers are
    assigned, not members, so anyone of the group may commit for them, and the reading
    consumer never commits: its ``close()`` must not wait on a commit that never returns.

    A client dropped while its commit is in flight is never closed from here (that would wait
    on the same commit); its thread closes it if the commit ever returns. Such a late commit
    carries older offsets than the call that dropped it went on to commit, so ``close()``
    commits the run's last offsets once more if one went through after them.
    """

    def __init__(
        self,
        new_client: Callable[[], Consumer],
        log: Log,
        attempt_timeout_s: float = 30.0,
    ) -> None:
        self._new_client = new_client
        self._log = log
        self.attempt_timeout_s = attempt_timeout_s
        self._client: Consumer | None = None
        self._dropped: list[_CommitAttempt] = []  # tries still in flight on dropped clients
        self._last: list[TopicPartition] = []
        self._last_at = 0.0

    def commit(self, offsets: list[TopicPartition], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._client is None:
                self._client = self._new_client()
            attempt = _CommitAttempt(self._client, offsets)
            wait_s = min(self.attempt_timeout_s, max(0.0, deadline - time.monotonic()))
            if not attempt.wait(wait_s) and attempt.drop():
                self._dropped.append(attempt)
                self._client = None
                error = KafkaError(
                    KafkaError._TIMED_OUT, f"the commit did not answer in {wait_s:.0f} s"
                )
                if time.monotonic() >= deadline:
                    raise KafkaException(error)
                self._log(f"commit waits: {error}")
                self._log("commit tries again through a new consumer of the group")
                continue
            if attempt.error is None:
                self._last, self._last_at = offsets, time.monotonic()
                return
            error = attempt.error
            if error.fatal() or not retriable(error) or time.monotonic() > deadline:
                raise KafkaException(error)
            self._log(f"commit waits: {error}")
            if error.code() in _COORDINATOR_LOST:
                self._client.close()
                self._client = None
                self._log("commit tries again through a new consumer of the group")
            time.sleep(1.0)

    def close(self, timeout_s: float = 30.0) -> None:
        """At the end of a run: undo a late commit of older offsets (see the class), then
        close the client."""
        if any(a.succeeded_at > self._last_at for a in self._dropped) and self._last:
            self._log("a dropped client's commit went through late: the last offsets again")
            try:
                self.commit(self._last, timeout_s)
            except KafkaException as exc:
                self._log(f"commit of the last offsets again failed ({exc}); the next run replays")
        if self._client is not None:
            self._client.close()
            self._client = None
        # a run's last offsets are not the next run's: another lander may land the shard
        self._dropped, self._last, self._last_at = [], [], 0.0


class _CommitAttempt:
    """One synchronous commit in a thread of its own, which may be given up on."""

    def __init__(self, client: Consumer, offsets: list[TopicPartition]) -> None:
        self.error: KafkaError | None = None
        self.succeeded_at = 0.0  # monotonic time of a successful answer
        self._client = client
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._dropped = False
        threading.Thread(
            target=self._run, args=(offsets,), name="offset-commit", daemon=True
        ).start()

    def _run(self, offsets: list[TopicPartition]) -> None:
        try:
            for tp in self._client.commit(offsets=offsets, asynchronous=False) or []:
                if tp.error is not None:
                    raise KafkaException(tp.error)
            self.succeeded_at = time.monotonic()
        except KafkaException as exc:
            self.error = exc.args[0]
        with self._lock:
            self._answered.set()
            dropped = self._dropped
        if dropped:  # nobody else holds the client now, and its commit has returned
            self._client.close()

    def wait(self, timeout_s: float) -> bool:
        return self._answered.wait(timeout_s)

    def drop(self) -> bool:
        """Give up on it (its thread closes the client if it ever answers); False when it
        answered meanwhile and the client is still ours."""
        with self._lock:
            if self._answered.is_set():
                return False
            self._dropped = True
            return True


def retriable(error: KafkaError) -> bool:
    """A commit error worth waiting out (librdkafka's own list, and coordinator moves)."""
    return error.retriable() or error.code() in _RETRIABLE_COMMIT


def raise_unless_transient(error: KafkaError, log: Log) -> None:
    """librdkafka reports and retries transient errors itself; fail only on what won't heal."""
    if error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal() or error.code() in _FATAL_CODES:
        raise KafkaException(error)
    log(f"kafka (retrying): {error}")
