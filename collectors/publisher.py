"""The collector's way to Kafka: an idempotent, compressed producer, and a disk spool for when
Kafka cannot be reached.

While every broker is down, messages go to the spool instead of the producer, in order; the
producer keeps the few it already had (no local timeout) and delivers them first when Kafka is
back, then the spool is replayed segment by segment, and only when it is empty do messages go
straight to the producer again. So per-workload order holds and nothing is lost; on shutdown
anything the producer could not deliver is written to the front of the spool, and the next start
replays it.

A topic that does not exist (not created yet, deleted, a wrong prefix) is handled the same way:
its messages go to the spool, with an error naming the topic, and the spool is replayed once
every topic it holds exists. The messages the producer had already taken for it come back in
its failure reports, which are served (and spooled) before the message that found the topic
missing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge

from collectors.spool import Spool, SpoolRecord
from schemas.connections import KafkaConnection

__all__ = ["Publisher"]

log = logging.getLogger("procwarden.collector.publisher")

PUBLISHED = Counter("procwarden_collector_published_total", "Messages handed to Kafka",
                    ["topic"])
SPOOLED = Counter("procwarden_collector_spooled_total", "Messages written to the disk spool")
REPLAYED = Counter("procwarden_collector_replayed_total", "Spooled messages sent to Kafka")
SPOOL_BYTES = Gauge("procwarden_collector_spool_bytes", "Size of the disk spool")

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
_MISSING = (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART)


class Publisher:
    def __init__(self, kafka: KafkaConnection, spool_dir: Path, spool_max_bytes: int,
                 check_every_s: float = 2.0) -> None:
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.spooling = bool(self.spool)  # a spool left by the last run goes out first
        self.check_every_s = check_every_s
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._undelivered: list[SpoolRecord] = []
        self.producer = Producer({
            **kafka.confluent_config(), "enable.idempotence": True, "acks": "all",
            "compression.type": "lz4", "linger.ms": 5, "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 200_000,
            "message.timeout.ms": 0,  # never give up on a message: the spool is the fallback
            # Reports only for failures: a Python call per delivered message cost a tenth of
            # the collector's time.
            "delivery.report.only.error": True, "on_delivery": self._delivered,
            "error_cb": self._on_error})
        self._published: dict[str, Counter] = {}  # topic -> its PUBLISHED child
        self._missing: set[str] = set()  # topics found missing, said once each
        SPOOL_BYTES.set(self.spool.size)
        if self.spooling:
            log.warning("replaying %d bytes spooled by an earlier run once Kafka answers",
                        self.spool.size)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN and not self.spooling:
            with self._lock:
                self.spooling = True
            log.warning("Kafka is unreachable: spooling to %s", self.spool.folder)

    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        """Hand one message on (from any thread); False only when it had to be dropped."""
        with self._lock:
            if self.spooling:
                return self._spool(topic, key, value)
        try:
            self._produce(topic, key, value)
        except KafkaException as exc:
            if exc.args[0].code() not in _MISSING:
                raise
            # What the producer had taken for that topic comes back in its failure reports,
            # ready now: spooled first, so the spool keeps the order.
            self.producer.poll(0)
            with self._lock:
                self._topic_missing(topic)
                return self._spool(topic, key, value)
        counted = self._published.get(topic)
        if counted is None:
            counted = self._published[topic] = PUBLISHED.labels(topic.rsplit(".", 1)[-1])
        counted.inc()
        return True

    def _spool(self, topic: str, key: bytes, value: bytes) -> bool:
        """Under the lock."""
        if not self.spool.append(topic, key, value):
            return False  # the caller counts it lost (reason spool_full)
        SPOOLED.inc()
        SPOOL_BYTES.set(self.spool.size)
        return True

    def _topic_missing(self, topic: str) -> None:
        """Under the lock: from now on every message is spooled, in order, until it exists."""
        self.spooling = True
        if topic not in self._missing:
            self._missing.add(topic)
            log.error("the topic %s does not exist: spooling until it does", topic)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key)
                return
            except BufferError:  # the local queue is full: wait for deliveries
                self.producer.poll(0.1)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and err.code() in _PURGED:  # shutting down while Kafka is away
            self._undelivered.append((msg.topic() or "", msg.key() or b"", msg.value() or b""))
        elif err is not None and err.code() in _MISSING:
            topic = msg.topic() or ""
            with self._lock:
                self._topic_missing(topic)
                if not self._spool(topic, msg.key() or b"", msg.value() or b""):
                    log.error("a message for %s was lost: the spool is full", topic)
        elif err is not None:
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def poll(self) -> None:
        """Serve delivery reports; while spooling, see whether Kafka is back and replay."""
        self.producer.poll(0)
        if self.spooling and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_every_s
            self._replay_one_segment()

    def _replay_one_segment(self) -> None:
        try:
            topics = self.producer.list_topics(timeout=1.0).topics
        except KafkaException:
            return  # still away
        if len(self.producer):
            self.producer.poll(0.5)  # what it held from before the outage goes first
            return
        with self._lock:
            if not self.spool:
                self.spooling = False
                log.warning("Kafka is back: the spool is empty, publishing directly")
                return
            path, records = next(self.spool.drain())
            for topic in {topic for topic, _, _ in records}:
                meta = topics.get(topic)
                if meta is None or meta.error is not None:
                    self._topic_missing(topic)
                    return  # not until every topic the segment holds exists
            for topic in [t for t in self._missing if t in topics]:
                self._missing.discard(topic)
                log.warning("the topic %s exists now", topic)
        for topic, key, value in records:
            self._produce(topic, key, value)
        if self.producer.flush(30) == 0:
            with self._lock:
                self.spool.done(path)
                SPOOL_BYTES.set(self.spool.size)
            REPLAYED.inc(len(records))
            log.info("replayed %d spooled messages from %s", len(records), path.name)
        # else: Kafka went away again mid-replay; the segment stays and is replayed again
        # (the idempotent producer and the stream app's event ids make a repeat harmless).

    def close(self) -> None:
        """Deliver what can be; keep the rest in the spool for the next run."""
        remaining = self.producer.flush(0 if self.spooling else 30)
        if remaining:
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(1)  # serves the purge reports into _undelivered
            with self._lock:
                self.spool.prepend(self._undelivered)
            log.warning("kept %d undelivered messages in the spool for the next run",
                        len(self._undelivered))
        self.spool.close()
