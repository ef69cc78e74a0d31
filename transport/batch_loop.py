"""The consume -> handle -> commit loop of a batch consumer (the ClickHouse sink, the SIEM
forwarder), written once.

A batch is read (up to `batch_size` messages or `batch_seconds`, stretched by `linger_s` after
its first message when the handler wants repeats together), handed to the role's handler, and
its offsets are committed only once the handler says it is done with it: a batch that could
not be stored or sent is read again after a restart, never lost. Each message's own work runs
inside the role's `MessageGuard` (`guarded`), so a message that cannot be handled becomes a
bounded dead letter with its offset and the batch goes on. A failure of what the role writes to
(ClickHouse, a SIEM) is retried with backoff by `retry`, with the partitions paused meanwhile:
the consumer stays in its group and falls behind, which the lag gauge shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Gauge

from transport.guard import MessageGuard

__all__ = ["BatchLoop", "commit_batch"]

log = logging.getLogger("procwarden.transport")

StopFn = Callable[[], bool]


@dataclass
class BatchLoop:
    """One consumer's batches, guarded messages, paused retries and commits."""

    consumer: Consumer
    guard: MessageGuard
    lag: Gauge
    batch_size: int
    batch_seconds: float
    max_backoff: float
    linger_s: float = 0.0

    def run(self, handle: Callable[[list[Message], StopFn], bool], should_stop: StopFn,
            between: Callable[[], None] = lambda: None) -> None:
        """Until `should_stop`: a batch, `handle(batch, should_stop)`, and the commit if it
        returned True (False: stopped before the batch was done; nothing is committed).
        `between` runs after every round (e.g. hourly housekeeping)."""
        while not should_stop():
            batch = self.poll()
            if batch and handle(batch, should_stop):
                self.commit(batch)
            between()

    def poll(self) -> list[Message]:
        """One batch: until it is full or `batch_seconds` have passed (at most that, plus
        `linger_s`, so a stop request waits no longer)."""
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        lingered = False
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            want = min(10_000, self.batch_size - len(batch))
            got = self.consumer.consume(want, wait)
            for msg in got:
                if msg.error():
                    log.warning("kafka: %s", msg.error())
                    continue
                batch.append(msg)
            if batch and self.linger_s > 0 and not lingered:
                # Repeats arriving within the window after the first message come together.
                deadline = max(deadline, time.monotonic() + self.linger_s)
                lingered = True
            elif not got:
                break  # a consumer returns nothing only once its whole wait is over
        return batch

    def guarded(self, msg: Message, handle: Callable[[], Any]) -> Any:
        """`handle()`'s result, or None once the message is dead-lettered."""
        return self.guard.run(handle, topic=msg.topic() or "", partition=msg.partition() or 0,
                              offset=msg.offset() or 0, key=msg.key(), value=msg.value())

    def refuse(self, msg: Message, exc: Exception) -> None:
        self.guard.refuse(exc, topic=msg.topic() or "", partition=msg.partition() or 0,
                          offset=msg.offset() or 0, key=msg.key(), value=msg.value())

    def retry(self, attempt: Callable[[], None], retry_on: tuple[type[BaseException], ...],
              should_stop: StopFn, on_failure: Callable[[BaseException, float], None],
              on_recovery: Callable[[], None] = lambda: None) -> bool:
        """Call `attempt` until it does not raise one of `retry_on`, backing off from 0.2 s to
        `max_backoff` with the partitions paused (polled, so the consumer stays in its group).
        `on_failure(exc, delay)` reports each failure, `on_recovery` the success after one.
        False if told to stop first."""
        delay, paused = 0.2, False
        while True:
            try:
                attempt()
                break
            except retry_on as exc:
                on_failure(exc, delay)
                if not paused:
                    self.consumer.pause(self.consumer.assignment())
                    paused = True
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    self.consumer.poll(0.1)
                if should_stop():
                    return False
                delay = min(delay * 2, self.max_backoff)
        if paused:
            self.consumer.resume(self.consumer.assignment())
            on_recovery()
        return True

    def commit(self, batch: Sequence[Message]) -> None:
        self.lag.set(commit_batch(self.consumer, batch))


def commit_batch(consumer: Consumer, batch: Sequence[Message]) -> int:
    """Commit the offsets after each partition's last message in `batch` (synchronously), then
    return how many messages the consumer is behind the ends of its partitions."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        key = (msg.topic() or "", msg.partition() or 0)
        last[key] = max(last.get(key, -1), msg.offset() or 0)
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                        asynchronous=False)
    except KafkaException as exc:
        # What was stored stays stored; a replay after a failed commit collapses downstream.
        log.warning("committing offsets failed: %s", exc)
    behind = 0
    for tp in consumer.assignment():
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=1, cached=True)
            position = consumer.position([tp])[0].offset
        except KafkaException:
            continue
        if position >= 0 and high >= 0:
            behind += max(0, high - position)
    return behind
