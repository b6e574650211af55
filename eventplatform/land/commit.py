"""Handing a landed batch back to Kafka, and which Kafka errors end a landing run.

The offsets of a batch are committed only once both sinks hold it and the broker holds every
one of its dead letters; the commit rides out a coordinator that moves or a broker that
restarts, because the sinks already hold the batch and waiting is cheaper than a replay.
While reading, librdkafka reports transient errors and retries them itself: a run fails only
on what will not heal.
"""

from __future__ import annotations

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

# The consumer could not reach the group's coordinator (see ``commit_offsets``)
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


def commit_offsets(
    consumer: Consumer,
    offsets: list[TopicPartition],
    timeout_s: float,
    log: Log,
    standalone: Callable[[], Consumer] | None = None,
) -> None:
    """Commit, riding out a coordinator that moves or a broker that restarts.

    The sinks already hold the batch, so waiting is cheaper than failing (which would
    replay it); past ``timeout_s`` the run fails and the next one replays.

    After a commit that waited for the group's coordinator, the next tries go through a
    new consumer of the group (``standalone``; landing consumers are assigned, not members,
    so anyone of the group may commit for them): a librdkafka consumer that lost its
    coordinator across a broker restart was seen never to find it again (every commit
    waiting 60 s for ``_WAIT_COORD``, for as long as the run lasted) while a new client
    found it at once.
    """
    deadline = time.monotonic() + timeout_s
    committer = consumer
    while True:
        try:
            try:
                for tp in committer.commit(offsets=offsets, asynchronous=False) or []:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
            finally:
                if committer is not consumer:
                    committer.close()
            return
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal() or not retriable(error) or time.monotonic() > deadline:
                raise
            log(f"commit waits: {error}")
            committer = consumer
            if standalone is not None and error.code() in _COORDINATOR_LOST:
                committer = standalone()
                log("commit tries again through a new consumer of the group")
            time.sleep(1.0)


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
