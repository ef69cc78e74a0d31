"""The ClickHouse sink: Kafka topics to tables, in batches, committing offsets only after a
batch is stored.

While ClickHouse is down the writer keeps its batch, pauses its partitions and retries with
backoff: nothing is lost and nothing crash-loops; the lag grows in Kafka and shows in the
metrics. A crash between insert and commit replays the batch; the tables' ReplacingMergeTree
keys make those rows collapse into one (read with FINAL).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError
from confluent_kafka import Consumer, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from schemas import DecodeError, DlqEntry, Envelope, decode_envelope, encode
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import (
    COLLECTOR_REPORTS,
    DLQ,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
    TopicSpec,
)
from sinks.clickhouse.migrations import apply_migrations, connect
from sinks.clickhouse.retention import drop_expired_partitions
from sinks.clickhouse.rows import Table, table_for
from sinks.offsets import commit_batch

__all__ = ["ClickHouseWriter", "SINK_TOPICS"]

log = logging.getLogger("procwarden.sinks.clickhouse")

SINK_TOPICS: tuple[TopicSpec, ...] = (VERDICTS, SECURITY_EVENTS, PROFILE_CHANGES, WORKLOADS,
                                      COLLECTOR_REPORTS)

ROWS = Counter("procwarden_sink_rows_total", "Rows stored in ClickHouse", ["table"])
BATCHES = Histogram("procwarden_sink_batch_seconds", "Time to store one batch",
                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FAILURES = Counter("procwarden_sink_insert_failures_total", "Failed batch inserts")
INVALID = Counter("procwarden_sink_invalid_total", "Undecodable messages sent to the DLQ")
LAG = Gauge("procwarden_sink_lag_messages", "Messages behind the end of the topics")


@dataclass
class ClickHouseWriter:
    kafka: KafkaConnection
    clickhouse: ClickHouseConnection
    group_id: str = "procwarden-sink-clickhouse"
    batch_size: int = 50_000
    batch_seconds: float = 0.5
    max_backoff: float = 10.0
    retention_days: int = 0  # 0: keep everything
    topics: Sequence[TopicSpec] = SINK_TOPICS
    # Called after a batch is inserted and before its offsets are committed (crash tests).
    after_insert: Callable[[int], None] | None = None
    stored: int = 0
    _client: Client | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": self.group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 600_000, "fetch.max.bytes": 64 << 20})
        self.consumer.subscribe([self.kafka.topic(t.name) for t in self.topics])
        self.dlq = Producer({**self.kafka.confluent_config(), "enable.idempotence": True})
        self.db = self.clickhouse.database

    # -- the loop -------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self._ensure_schema()
        next_retention = 0.0
        while not should_stop():
            batch = self._poll_batch(should_stop)
            if batch:
                self._store_with_retry(batch, should_stop)
            if self.retention_days and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + 3600
                self.apply_retention()

    def apply_retention(self) -> list[tuple[str, str]]:
        """Drop the partitions past the retention (hourly from `run`); failures wait an hour."""
        try:
            return drop_expired_partitions(self._clickhouse(), self.db, self.retention_days)
        except (ClickHouseError, OSError, EOFError) as exc:
            self._client = None
            log.warning("retention pass failed: %s", exc)
            return []

    def close(self) -> None:
        self.consumer.close()
        self.dlq.flush(10)
        if self._client is not None:
            self._client.disconnect()

    def _poll_batch(self, should_stop: Callable[[], bool]) -> list[Message]:
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_size and time.monotonic() < deadline and not should_stop():
            msgs = self.consumer.consume(min(10_000, self.batch_size - len(batch)), 0.1)
            for msg in msgs:
                if msg.error():
                    log.warning("kafka: %s", msg.error())
                    continue
                batch.append(msg)
        return batch

    def _store_with_retry(self, batch: list[Message], should_stop: Callable[[], bool]) -> None:
        delay = 0.2
        paused = False
        while True:
            try:
                self.store(batch)
                break
            except (ClickHouseError, OSError, EOFError) as exc:
                FAILURES.inc()
                self._client = None
                if not paused:
                    self.consumer.pause(self.consumer.assignment())
                    paused = True
                log.warning("storing %d messages failed (%s); retrying in %.1f s", len(batch),
                            exc, delay)
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    self.consumer.poll(0.1)  # stay in the group while paused
                if should_stop():
                    return  # uncommitted: the next run stores the batch again
                delay = min(delay * 2, self.max_backoff)
        if paused:
            self.consumer.resume(self.consumer.assignment())
        if self.after_insert is not None:
            self.after_insert(len(batch))
        self._commit(batch)

    # -- storing --------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        apply_migrations(self._clickhouse(), self.db)

    def _clickhouse(self) -> Client:
        if self._client is None:
            self._client = connect(self.clickhouse, settings={"insert_block_size": 1 << 20})
        return self._client

    def store(self, batch: Sequence[Message]) -> None:
        """Insert a batch, columnar, one INSERT per table; undecodable messages go to the DLQ."""
        started = time.perf_counter()
        by_table: dict[Table, list[Envelope]] = defaultdict(list)
        for msg in batch:
            value = msg.value()
            if value is None:
                continue  # a tombstone on a compacted topic
            try:
                env = decode_envelope(value)
            except DecodeError as exc:
                self._dead_letter(msg, f"invalid message: {exc}")
                continue
            table = table_for(env)
            if table is None:
                self._dead_letter(msg, f"{env.kind.value} does not belong on {msg.topic()}")
                continue
            by_table[table].append(env)
        client = self._clickhouse()
        for table, envs in by_table.items():
            client.execute(f"INSERT INTO {self.db}.{table.name} ({', '.join(table.columns)}) "
                           "VALUES", table.values(envs), columnar=True)
            ROWS.labels(table.name).inc(len(envs))
        self.dlq.flush(30)
        self.stored += len(batch)
        BATCHES.observe(time.perf_counter() - started)

    def _dead_letter(self, msg: Message, error: str) -> None:
        INVALID.inc()
        entry = DlqEntry(topic=msg.topic() or "", partition=msg.partition() or 0,
                         offset=msg.offset() or 0, error=error,
                         value=(msg.value() or b"").decode(errors="replace"), ts=time.time())
        env = Envelope.wrap(entry, event_id=f"dlq:{entry.topic}:{entry.partition}:{entry.offset}",
                            node="sink-clickhouse", ts=entry.ts)
        self.dlq.produce(self.kafka.topic(DLQ.name), key=entry.topic.encode(), value=encode(env))

    def _commit(self, batch: Sequence[Message]) -> None:
        LAG.set(commit_batch(self.consumer, batch))
