"""Dead letters from the sinks: the guard's bounded entries, published on `procwarden.dlq`.

Sinks may write the DLQ (and nothing else another stage reads). A dead letter that cannot be
queued or delivered is counted (`procwarden_dead_letters_total{reason="dlq_failed"}`) and
logged; it never stops the sink, which goes on with the next message.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas import DlqEntry, Envelope, encode
from schemas.connections import KafkaConnection
from schemas.topics import DLQ
from transport.guard import DEAD_LETTERS

__all__ = ["DeadLetters"]

log = logging.getLogger("procwarden.sinks")


class DeadLetters:
    """`guard`'s `dead_letter` callable for a sink: produce one entry, count what is lost."""

    def __init__(self, kafka: KafkaConnection, stage: str,
                 producer: Producer | None = None) -> None:
        self.stage = stage
        self.topic = kafka.topic(DLQ.name)
        self.producer = producer if producer is not None else Producer(
            {**kafka.confluent_config(), "enable.idempotence": True})
        self.published = 0

    def __call__(self, entry: DlqEntry) -> None:
        env = Envelope.wrap(entry, node=self.stage, ts=entry.ts,
                            event_id=f"dlq:{self.stage}:{entry.topic}:{entry.partition}:"
                                     f"{entry.offset}")
        value = encode(env)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                DEAD_LETTERS.labels(self.stage, entry.topic, "dlq_failed").inc()
                log.error("%s: the dead letter of %s[%d]@%d was not delivered: %s", self.stage,
                          entry.topic, entry.partition, entry.offset, err)

        try:
            self.producer.produce(self.topic, key=entry.topic.encode(), value=value,
                                  on_delivery=delivered)
        except BufferError:  # the local queue is full: make room once, then give up (counted)
            self.producer.poll(1.0)
            self.producer.produce(self.topic, key=entry.topic.encode(), value=value,
                                  on_delivery=delivered)
        self.producer.poll(0)
        self.published += 1

    def flush(self, timeout: float) -> None:
        """Deliver what is queued (before the batch's offsets are committed)."""
        try:
            left = self.producer.flush(timeout)
        except KafkaException as exc:
            log.warning("%s: flushing dead letters failed: %s", self.stage, exc)
            return
        if left:
            log.warning("%s: %d dead letter(s) still queued after %.0f s", self.stage, left,
                        timeout)
