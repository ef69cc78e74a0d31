"""Where the event decider's outputs go: a confluent-kafka (librdkafka) producer of its own.

aiokafka's producer costs tens of microseconds of Python per message, more than deciding the
event does; librdkafka batches, compresses and retries in its own threads for a microsecond or
two of Python per message. The Faust agents keep the app's producer: Faust flushes that one
before it commits their offsets. The decider flushes this one before it commits its own.

Delivery reports come back only for failures (`delivery.report.only.error`), served by the flush
that precedes each commit: it tells whether everything sent since the last one is in Kafka.

A failure is one of two kinds, and only one of them may stop the worker:
- the output itself was refused (over the producer's `message.max.bytes`, or the broker's limit,
  or invalid): a hostile input can make such an output at will, and a worker that stopped for it
  would meet it again after every restart. `send` raises `OutputRefused` for it at once (the
  caller dead-letters the input that made it); one that the broker refuses later is counted and
  dead-lettered here, bounded (`transport.dead_letter_entry`), and the batch goes on.
- anything else means Kafka is not taking outputs (timed out, unreachable, not authorised, the
  idempotent producer fenced): `delivered` raises `DeliveryFailed`, and the worker stops with
  the batch uncommitted, to decide it again once Kafka is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

from schemas import Envelope, encode
from schemas.connections import KafkaConnection
from schemas.topics import DLQ
from transport import DlqLimits, dead_letter_entry
from transport.signing import Header

__all__ = ["OUTPUT_REFUSED", "DeliveryFailed", "KafkaOutput", "OutputRefused", "refused_error"]

log = logging.getLogger("procwarden.streams.output")

OUTPUT_REFUSED = Counter("procwarden_streams_output_refused_total",
                         "Outputs Kafka refused for themselves (too large, invalid): each one "
                         "dead-lettered, the batch goes on", ["topic", "error"])

# Errors that concern one message, not Kafka: whatever else fails means Kafka is not taking
# outputs, and stopping (the batch uncommitted) is right.
_REFUSED_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                            KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE,
                            KafkaError.INVALID_RECORD, KafkaError._BAD_MSG})
# Refused outputs kept whole until the flush that dead-letters them; more are only counted.
_KEPT_REFUSED = 64


def refused_error(error: KafkaError) -> bool:
    """Whether a produce error is about the message itself (not about Kafka)."""
    return error.code() in _REFUSED_CODES and not error.fatal()


# The headers that sign an output (streams/worker/provenance.py's RecordSigner).
Sign = Callable[[str, bytes | None, bytes | None], list[Header]]


class DeliveryFailed(RuntimeError):
    """An output did not reach Kafka: its input must not count as done."""


class OutputRefused(RuntimeError):
    """Kafka refused this one output (too large, invalid); other outputs go on."""

    def __init__(self, topic: str, size: int, error: KafkaError) -> None:
        super().__init__(f"an output of {size} bytes for {topic} was refused: {error.str()}")
        self.error = error


class KafkaOutput:
    """Idempotent, acks=all, lz4; partitions by Kafka's murmur2, like the Java clients and the
    collectors' `verdict_partition`, so a node's verdicts land on the partition it reads.

    The linger only groups a busy batch's outputs into fewer, larger requests (less broker CPU
    on a shared machine: 25,000 -> 30,000 events/s in bench/stream.py); it adds no latency,
    as every batch ends with a flush."""

    def __init__(self, kafka: KafkaConnection, linger_ms: float = 5.0, *,
                 node: str = "streams", limits: DlqLimits | None = None,
                 sign: Sign | None = None, **overrides: Any) -> None:
        self._sign = sign
        self._failures: list[KafkaError] = []
        # Refused by the broker after `send`: (error, topic, partition, key, value), bounded.
        self._refused: list[tuple[KafkaError, str, int, bytes | None, bytes | None]] = []
        self._dlq_topic = kafka.topic(DLQ.name)
        self._node = node
        self._limits = limits or DlqLimits()
        self._producer = Producer({
            **kafka.confluent_config(),
            "enable.idempotence": True, "acks": "all", "compression.type": "lz4",
            "partitioner": "murmur2_random", "linger.ms": linger_ms,
            "batch.size": 1 << 20,
            # what may wait in memory for the broker; a full queue makes `send` wait
            "queue.buffering.max.messages": 200_000, "queue.buffering.max.kbytes": 256 << 10,
            "delivery.report.only.error": True, "on_delivery": self._on_delivery,
            **overrides})

    def _on_delivery(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:  # served by poll/flush, in whichever thread calls them
            return
        topic = msg.topic() or ""
        if not refused_error(error):
            self._failures.append(error)
            return
        OUTPUT_REFUSED.labels(topic, error.name()).inc()
        if len(self._refused) < _KEPT_REFUSED:
            partition = msg.partition()
            self._refused.append((error, topic, -1 if partition is None else partition,
                                  msg.key(), msg.value()))
        else:
            log.error("an output for %s was refused (%s); too many to dead-letter this batch",
                      topic, error)

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Hand one output to the producer; OutputRefused if it is refused for itself."""
        while True:
            try:
                headers = self._sign(topic, key, value) if self._sign else None
                self._producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:  # the local queue is full: let librdkafka deliver some
                await asyncio.get_running_loop().run_in_executor(None, self._producer.poll, 0.1)
            except KafkaException as exc:
                error = exc.args[0]
                if not isinstance(error, KafkaError) or not refused_error(error):
                    # Kafka, not this output: fail the batch at its delivery check
                    self._failures.append(error if isinstance(error, KafkaError)
                                          else KafkaError(KafkaError._FAIL, str(exc)))
                    return
                OUTPUT_REFUSED.labels(topic, error.name()).inc()
                raise OutputRefused(topic, len(value or b""), error) from None

    async def delivered(self) -> None:
        """Wait until everything sent is delivered or has failed (librdkafka retries until
        `message.timeout.ms`); raise DeliveryFailed if anything failed since the last call
        for a reason other than the output itself. Outputs refused for themselves are
        dead-lettered (and those dead letters delivered) before this returns."""
        loop = asyncio.get_running_loop()
        while True:
            while await loop.run_in_executor(None, self._producer.flush, 1.0):
                pass
            if self._failures:
                failed, self._failures = self._failures, []
                raise DeliveryFailed(f"{len(failed)} messages were not delivered ({failed[0]})")
            if not self._refused:
                return
            refused, self._refused = self._refused, []
            for error, topic, partition, key, value in refused:
                self._dead_letter(error, topic, partition, key, value)

    def _dead_letter(self, error: KafkaError, topic: str, partition: int, key: bytes | None,
                     value: bytes | None) -> None:
        log.error("an output for %s[%d] was refused (%s): to the DLQ", topic, partition, error)
        entry = dead_letter_entry(stage="streams", topic=topic, partition=partition, offset=-1,
                                  key=key, value=value, error=f"output refused: {error.str()}",
                                  ts=time.time(), limits=self._limits)
        digest = hashlib.sha256(value or b"").hexdigest()[:16]
        env = Envelope.wrap(entry, event_id=f"dlq:{topic}:out:{digest}", node=self._node,
                            ts=entry.ts)
        try:
            value, key = encode(env), topic.encode()
            headers = self._sign(self._dlq_topic, key, value) if self._sign else None
            self._producer.produce(self._dlq_topic, value, key, headers=headers)
        except (BufferError, KafkaException) as exc:
            log.error("the dead letter of a refused output was lost: %s", exc)

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is left; the number of messages still undelivered."""
        left: int = self._producer.flush(timeout)
        if left:
            log.error("%d outputs still undelivered at close", left)
        return left
