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

A message Kafka will never take (over the producer's `message.max.bytes`, refused by the
broker, or rejected by the client) is dropped, counted (`procwarden_collector_unpublishable_total`
and the collector report's losses) and logged, bounded: never raised into the sensing loop, and
never spooled to trip the next start. A spooled record refused at replay is dropped the same way,
and so is one for a topic that does not exist and that no collector publishes to (a name damaged
on disk): waiting for it would hold back every record behind it for good. A missing topic of
its own is waited for (it may be being created), and one gone between the metadata and the
produce is retried, never dropped.

Every record is signed as this node (transport/signing.py, in its Kafka headers) when it is
produced, spooled ones at their replay: the spool keeps no headers, and a key rotated during an
outage signs what the outage kept.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge

from collectors.publishing.spool import Spool, SpoolRecord
from schemas.connections import KafkaConnection
from schemas.topics import ALL_TOPICS
from transport.signing import Signer

__all__ = ["Publisher"]

log = logging.getLogger("procwarden.collector.publisher")

PUBLISHED = Counter("procwarden_collector_published_total", "Messages handed to Kafka",
                    ["topic"])
SPOOLED = Counter("procwarden_collector_spooled_total", "Messages written to the disk spool")
REPLAYED = Counter("procwarden_collector_replayed_total", "Spooled messages sent to Kafka")
SPOOL_BYTES = Gauge("procwarden_collector_spool_bytes", "Size of the disk spool")
UNPUBLISHABLE = Counter("procwarden_collector_unpublishable_total",
                        "Messages dropped because Kafka would never take them", ["topic", "reason"])

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
_MISSING = (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART)


# The metric's topic label: the topic's own name for procwarden's, one label for any other (a
# damaged name must not make a series of its own).
_LABELS = frozenset(t.name.rsplit(".", 1)[-1] for t in ALL_TOPICS)

# librdkafka's message.max.bytes: the whole record (value, key and its framing) must fit; what
# is larger is refused by produce() and would be by the broker.
MAX_MESSAGE_BYTES = 1_000_000
_FRAMING = 512  # what a record adds to its key and value (its ~170 bytes of signature
# headers included), with room to spare
_FULL_QUEUE_WAIT_S = 2.0  # a full local queue for this long: Kafka is as good as away
_LOG_EVERY = 1000  # of the drops of one reason, the first and then one in this many are logged
_LOGGED_BYTES = 200  # of an error's text


class Publisher:
    def __init__(self, kafka: KafkaConnection, spool_dir: Path, spool_max_bytes: int,
                 check_every_s: float = 2.0, *, lose: Callable[[str], None] | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, signer: Signer | None = None
                 ) -> None:
        """`lose(reason)` is told of each message dropped here (the collector report's
        losses; reasons "unpublishable:<error>")."""
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.max_message_bytes = max_message_bytes
        self.signer = signer  # None: unsigned (tests of other concerns)
        self._lose = lose
        self.lost: collections.Counter[str] = collections.Counter()  # reason -> dropped
        self.spooling = bool(self.spool)  # a spool left by the last run goes out first
        self.check_every_s = check_every_s
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._undelivered: list[SpoolRecord] = []
        self.producer = Producer({
            **kafka.confluent_config(), "enable.idempotence": True, "acks": "all",
            "compression.type": "lz4", "linger.ms": 5, "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 200_000, "message.max.bytes": max_message_bytes,
            "message.timeout.ms": 0,  # never give up on a message: the spool is the fallback
            # Reports only for failures: a Python call per delivered message cost a tenth of
            # the collector's time.
            "delivery.report.only.error": True, "on_delivery": self._delivered,
            "error_cb": self._on_error})
        self._published: dict[str, Counter] = {}  # topic -> its PUBLISHED child
        self._missing: set[str] = set()  # topics found missing, said once each
        # What a collector publishes to: a missing one of these is waited for, any other
        # missing one will never come.
        self.topics = frozenset(kafka.topic(t.name) for t in ALL_TOPICS)
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
        """Hand one message on (from any thread); False only when the spool was full (the
        caller counts it); one Kafka would never take is dropped and counted here."""
        if len(value) + len(key) + len(topic) + _FRAMING > self.max_message_bytes:
            self._drop(topic, "too_large", f"{len(value)} bytes")
            return True
        with self._lock:
            if self.spooling:
                return self._spool(topic, key, value)
        try:
            if not self._produce(topic, key, value):
                # Its queue stayed full: Kafka is as good as away; this and what follows go
                # to the spool, in order, until the queue has drained.
                with self._lock:
                    if not self.spooling:
                        self.spooling = True
                        log.warning("the producer's queue stays full: spooling to %s",
                                    self.spool.folder)
                    return self._spool(topic, key, value)
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.code() not in _MISSING:
                self._drop(topic, _reason(exc), str(exc))
                return True
            # What the producer had taken for that topic comes back in its failure reports,
            # ready now: spooled first, so the spool keeps the order.
            self.producer.poll(0)
            with self._lock:
                self._topic_missing(topic)
                return self._spool(topic, key, value)
        except (ValueError, TypeError) as exc:  # what the client refuses before Kafka sees it
            self._drop(topic, type(exc).__name__, str(exc))
            return True
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

    def _drop(self, topic: str, reason: str, detail: str) -> None:
        """A message Kafka will never take: counted, and logged bounded (text and rate)."""
        label = topic.rsplit(".", 1)[-1]
        UNPUBLISHABLE.labels(label if label in _LABELS else "other", reason).inc()
        with self._lock:
            self.lost[f"unpublishable:{reason}"] += 1
            n = self.lost[f"unpublishable:{reason}"]
        if self._lose is not None:
            self._lose(f"unpublishable:{reason}")
        if n == 1 or n % _LOG_EVERY == 0:
            log.error("a message for %s was dropped (%d so far): Kafka refuses it: %s", topic,
                      n, detail[:_LOGGED_BYTES])

    def _produce(self, topic: str, key: bytes, value: bytes,
                 wait_s: float = _FULL_QUEUE_WAIT_S) -> bool:
        """False when the local queue stayed full for `wait_s`."""
        deadline = time.monotonic() + wait_s
        headers: list[tuple[str, str | bytes | None]] | None = None
        if self.signer is not None:
            headers = list(self.signer.headers(topic, key, value))
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return True
            except BufferError:  # the local queue is full: wait for deliveries
                if time.monotonic() >= deadline:
                    return False
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
        elif err is not None:  # refused for good (the producer never gives up otherwise)
            self._drop(msg.topic() or "", _reason(KafkaException(err)), str(err))

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
            never: set[str] = set()  # missing, and no collector's: it will never come
            for topic in {topic for topic, _, _ in records}:
                meta = topics.get(topic)
                if meta is None and topic not in self.topics:
                    never.add(topic)
                elif meta is None or (meta.error is not None and topic in self.topics):
                    self._topic_missing(topic)
                    return  # not until every topic of ours the segment holds exists
            for topic in [t for t in self._missing if t in topics]:
                self._missing.discard(topic)
                log.warning("the topic %s exists now", topic)
        for topic, key, value in records:
            # A record Kafka refuses (one an older collector spooled whole, a damaged one) is
            # dropped and counted: it must not stop this start, nor the next.
            if topic in never:
                self._drop(topic, "unknown_topic", f"spooled, for {topic[:_LOGGED_BYTES]!r}")
                continue
            if len(value) + len(key) + len(topic) + _FRAMING > self.max_message_bytes:
                self._drop(topic, "too_large", f"spooled, {len(value)} bytes")
                continue
            try:
                if not self._produce(topic, key, value):
                    return  # Kafka went away again: the segment stays, replayed again later
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in _MISSING \
                        and topic in self.topics:
                    with self._lock:  # gone since the metadata: the segment stays, whole
                        self._topic_missing(topic)
                    return
                self._drop(topic, _reason(exc), f"spooled: {exc}")
            except (ValueError, TypeError) as exc:
                self._drop(topic, type(exc).__name__, f"spooled: {exc}")
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


def _reason(exc: KafkaException) -> str:
    """A label for a Kafka error: its name (MSG_SIZE_TOO_LARGE, ...), from a closed set."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return str(error.name())
    return "KafkaException"
