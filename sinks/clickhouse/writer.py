"""The ClickHouse sink: Kafka topics to tables, in batches, committing offsets only after a
batch is stored.

While ClickHouse is down the writer keeps its batch, pauses its partitions and retries with
backoff: nothing is lost and nothing crash-loops; the lag grows in Kafka and shows in the
metrics. A crash between insert and commit replays the batch; the tables' ReplacingMergeTree
keys make those rows collapse into one (read with FINAL).

No message can stop the sink. Each one is decoded inside the shared `MessageGuard` (stage
`sink-clickhouse`): an undecodable message, or one that does not belong on its topic, becomes a
bounded dead letter on `procwarden.dlq`. A row the ClickHouse client cannot write (a number out
of its column's range) or a batch the server refuses for its contents (more partitions than one
INSERT may touch, e.g. timestamps spread over years) is split in halves and inserted again until
the rows at fault stand alone; those are dead-lettered and the rest are stored. Only failures of
the server or the network are retried as a whole.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError
from clickhouse_driver.errors import ErrorCodes, ServerException, TypeMismatchError
from confluent_kafka import Consumer, Message
from prometheus_client import Counter, Gauge, Histogram

from schemas import DlqEntry, Envelope, decode_envelope
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import (
    COLLECTOR_REPORTS,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
    TopicSpec,
)
from sinks.clickhouse.migrations import apply_migrations, connect
from sinks.clickhouse.retention import drop_expired_partitions
from sinks.clickhouse.rows import NOT_STORED, Table, table_for
from sinks.dead_letters import DeadLetters
from transport.batch_loop import BatchLoop
from transport.guard import DlqLimits, MessageGuard, Refused
from transport.health import Health

__all__ = ["ClickHouseWriter", "SINK_TOPICS"]

log = logging.getLogger("procwarden.sinks.clickhouse")

SINK_TOPICS: tuple[TopicSpec, ...] = (VERDICTS, SECURITY_EVENTS, PROFILE_CHANGES, WORKLOADS,
                                      COLLECTOR_REPORTS)

ROWS = Counter("procwarden_sink_rows_total", "Rows stored in ClickHouse", ["table"])
BATCHES = Histogram("procwarden_sink_batch_seconds", "Time to store one batch",
                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FAILURES = Counter("procwarden_sink_insert_failures_total", "Failed batch inserts")
INVALID = Counter("procwarden_sink_invalid_total",
                  "Messages sent to the DLQ (undecodable, misplaced or unstorable rows)")
SPLITS = Counter("procwarden_sink_split_inserts_total",
                 "Inserts split in halves to find the rows ClickHouse refused", ["table"])

STAGE = "sink-clickhouse"
_CLICKHOUSE = "clickhouse"
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
    dlq_limits: DlqLimits = field(default_factory=DlqLimits)
    # ready while it reads the topics and ClickHouse takes what it reads
    health: Health = field(default_factory=lambda: Health(STAGE))
    # Called after a batch is inserted and before its offsets are committed (crash tests).
    after_insert: Callable[[int], None] | None = None
    stored: int = 0
    _client: Client | None = field(default=None, repr=False)
    _types: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": self.group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 600_000, "fetch.max.bytes": 64 << 20})
        self.consumer.subscribe([self.kafka.topic(t.name) for t in self.topics])
        self.dead_letters = DeadLetters(self.kafka, STAGE)
        self.guard = MessageGuard(STAGE, self._dead_letter, limits=self.dlq_limits)
        self.loop = BatchLoop(self.consumer, self.guard, LAG, batch_size=self.batch_size,
                              batch_seconds=self.batch_seconds, max_backoff=self.max_backoff)
        self.db = self.clickhouse.database

    # -- the loop -------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.health.needs(_CLICKHOUSE)
        self.health.start_heartbeat()
        self._ensure_schema()
        self.health.part(_CLICKHOUSE)
        next_retention = 0.0

        def housekeeping() -> None:
            nonlocal next_retention
            if self.retention_days and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + 3600
                self.apply_retention()
        self.loop.run(self._store_with_retry, should_stop, between=housekeeping)

    def apply_retention(self) -> list[tuple[str, str]]:
        """Drop the partitions past the retention (hourly from `run`); failures wait an hour."""
        try:
            return drop_expired_partitions(self._clickhouse(), self.db, self.retention_days)
        except (ClickHouseError, OSError, EOFError) as exc:
            self._client = None
            log.warning("retention pass failed: %s", exc)
            return []

    def close(self) -> None:
        self.health.stop()
        self.consumer.close()
        self.dead_letters.flush(10)
        if self._client is not None:
            self._client.disconnect()

    def _store_with_retry(self, batch: list[Message], should_stop: Callable[[], bool]) -> bool:
        def failed(exc: BaseException, delay: float) -> None:
            FAILURES.inc()
            self.health.part(_CLICKHOUSE, f"storing failed ({exc}), retrying"[:300])
            self._client = None
            log.warning("storing %d messages failed (%s); retrying in %.1f s", len(batch),
                        exc, delay)
        if not self.loop.retry(partial(self.store, batch), (ClickHouseError, OSError, EOFError),
                               should_stop, failed,
                               on_recovery=lambda: self.health.part(_CLICKHOUSE)):
            return False  # uncommitted: the next run stores the batch again
        if self.after_insert is not None:
            self.after_insert(len(batch))
        return True

    # -- storing --------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        apply_migrations(self._clickhouse(), self.db)

    def _clickhouse(self) -> Client:
        if self._client is None:
            self._client = connect(self.clickhouse, settings={"insert_block_size": 1 << 20})
        return self._client

    def store(self, batch: Sequence[Message]) -> None:
        """Insert a batch, columnar, one INSERT per table; what cannot be stored goes to the
        DLQ. Raises only for failures of ClickHouse itself (retried by the caller)."""
        started = time.perf_counter()
        by_table: dict[Table, list[tuple[Message, Envelope]]] = defaultdict(list)
        for msg in batch:
            value = msg.value()
            if value is None:
                continue  # a tombstone on a compacted topic
            placed = self.loop.guarded(msg, partial(self._place, msg, value))
            if placed is not None:
                by_table[placed[0]].append((msg, placed[1]))
        client = self._clickhouse()
        for table, items in by_table.items():
            self._insert(client, table, items)
        self.dead_letters.flush(30)
        self.stored += len(batch)
        BATCHES.observe(time.perf_counter() - started)

    def _place(self, msg: Message, value: bytes) -> tuple[Table, Envelope] | None:
        env = decode_envelope(value)
        table = table_for(env)
        if table is None:
            if type(env.payload) in NOT_STORED:
                return None
            raise Refused(f"{env.kind.value} does not belong on {msg.topic()}")
        return table, env

    def _insert(self, client: Client, table: Table, items: list[tuple[Message, Envelope]],
                *, checked: bool = False) -> None:
        columns = self._columns(table, items)
        if columns is None:
            return
        try:
            client.execute(f"INSERT INTO {self.db}.{table.name} ({', '.join(table.columns)}) "
                           "VALUES", columns[0], columnar=True)
        except Exception as exc:
            if not _refused_for_its_rows(exc):
                raise  # ClickHouse or the network: the caller retries the whole batch
            # (the driver has closed its connection and opens a new one for the next query)
            if len(columns[1]) == 1:
                self.loop.refuse(columns[1][0][0], exc)
                return
            if isinstance(exc, TypeMismatchError) and not checked:
                # Values out of their columns' ranges are found here in one pass; splitting
                # would cost two INSERTs per bad row, which a flood of them could use.
                kept = self._in_range(table, columns[1])
                self._insert(self._clickhouse(), table, kept, checked=True)
                return
            # Halves until the rows at fault stand alone. Halves stored before a later failure
            # of the server are stored again on the retry and collapse (ReplacingMergeTree).
            SPLITS.labels(table.name).inc()
            half = len(columns[1]) // 2
            client = self._clickhouse()
            self._insert(client, table, columns[1][:half], checked=checked)
            self._insert(self._clickhouse(), table, columns[1][half:], checked=checked)
            return
        ROWS.labels(table.name).inc(len(columns[1]))

    def _columns(self, table: Table, items: list[tuple[Message, Envelope]]
                 ) -> tuple[list[list[Any]], list[tuple[Message, Envelope]]] | None:
        """The batch's columns, and the items they hold; built for the whole batch at once,
        and message by message (dead-lettering the ones that fail) only if that fails."""
        try:
            return table.values([env for _, env in items]), items
        except Exception:  # one row could not be built: find it
            kept = [(m, e) for m, e in items
                    if self.loop.guarded(m, partial(table.values, [e])) is not None]
            if not kept:
                return None
            return table.values([env for _, env in kept]), kept

    def _in_range(self, table: Table, items: list[tuple[Message, Envelope]]
                  ) -> list[tuple[Message, Envelope]]:
        """The items whose every value fits its column's type; the others are dead-lettered."""
        types = self._column_types(table)
        kept = []
        for msg, env in items:
            row = table.row(env)
            bad = next((f"{name}: {value!r:.64} does not fit {types[name]}"
                        for name, value in zip(table.columns, row, strict=True)
                        if name in types and not _fits(types[name], value)), None)
            if bad is None:
                kept.append((msg, env))
            else:
                self.loop.refuse(msg, Refused(f"not storable in {table.name}: {bad}"))
        return kept

    def _column_types(self, table: Table) -> dict[str, str]:
        if table.name not in self._types:
            rows = self._clickhouse().execute(f"DESCRIBE TABLE {self.db}.{table.name}")
            self._types[table.name] = {str(r[0]): str(r[1]) for r in rows}
        return self._types[table.name]

    def _dead_letter(self, entry: DlqEntry) -> None:
        INVALID.inc()
        self.dead_letters(entry)


_PARTITIONS_PER_INSERT = "partitions for single insert block"
_INT = re.compile(r"(U?)Int(8|16|32|64)")


def _fits(type_name: str, value: Any) -> bool:
    """Whether the driver can write `value` into a column of `type_name` (the types the
    sink's tables use; others are left to the driver)."""
    if type_name.startswith("DateTime"):
        return type(value) is int and 0 <= value < 1 << 32
    if m := _INT.fullmatch(type_name):
        bits = int(m.group(2))
        low, high = (0, 1 << bits) if m.group(1) else (-(1 << (bits - 1)), 1 << (bits - 1))
        return isinstance(value, int) and low <= value < high
    if type_name == "String":
        return isinstance(value, str | bytes)
    if type_name.startswith("Array(") and type_name.endswith(")"):
        return isinstance(value, list | tuple) and all(_fits(type_name[6:-1], v) for v in value)
    return True


def _refused_for_its_rows(exc: Exception) -> bool:
    """Whether an INSERT failed for what its rows hold (the same rows would fail again), not
    for the state of the server or the network."""
    if isinstance(exc, TypeMismatchError):
        return True  # the client could not write a value into its column
    if isinstance(exc, ServerException):
        # "Too many parts" with merges behind is the same code and passes: retried whole.
        return (exc.code == ErrorCodes.TOO_MANY_PARTS
                and _PARTITIONS_PER_INSERT in exc.message.lower())
    # Anything else the driver raises while serializing the columns (a ValueError,
    # OverflowError, UnicodeEncodeError, ...) is about the values too.
    return not isinstance(exc, ClickHouseError | OSError | EOFError)
