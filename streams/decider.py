"""The hot path of the stream app: exec and file events, decided in batches.

Faust's stream machinery costs about 250 us per message on this class of machine (an agent that
does nothing peaks at ~3,900 messages/s; bench/stream.py), and aiokafka tens of microseconds more,
against ~40 us to decide an event. So the two event topics are read by this Faust service with a
confluent-kafka (librdkafka) consumer, in batches: each batch is decided in order (per partition,
so per workload), its outputs are handed to the decider's own producer (`KafkaOutput`), that
producer is flushed and every output's delivery checked, and only then are the batch's offsets
committed. An output that could not be delivered stops the worker with its batch uncommitted (a
restarted worker decides it again) rather than count it as done; so does a crash between flush
and commit, with the same results and ids.

The consumer group is `<app id>-events`: workers started together share the event partitions;
the remaining Faust agents (workload announcements, the policy writer) keep the app's own group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mode
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Gauge, Histogram

from schemas.connections import KafkaConnection
from streams.event_output import KafkaOutput
from streams.handlers import RawMessage

__all__ = ["EventDecider"]

log = logging.getLogger("procwarden.streams.decider")

LAG = Gauge("procwarden_streams_lag_messages", "Exec and file events not yet decided")
DECIDE_SECONDS = Histogram("procwarden_streams_decide_seconds",
                           "Time to decide one event and hand its outputs to the producer "
                           "(each batch's average)",
                           buckets=(0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                    0.005, 0.01, 0.025))


class EventDecider(mode.Service):
    def __init__(self, kafka: KafkaConnection, topics: list[str], group_id: str,
                 handle: Callable[[RawMessage], Awaitable[None]],
                 after_batch: Callable[[], Awaitable[None]],
                 output: KafkaOutput, ready: asyncio.Event, max_batch: int = 2000,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.handle = handle
        self.after_batch = after_batch
        self.output = output
        self.ready = ready
        self.max_batch = max_batch
        self._consumer: Consumer | None = None
        self._running: asyncio.Future[None] | None = None
        self._stopping = False
        # the offsets last committed; None once a batch's outputs were lost
        self._committed: list[TopicPartition] | None = []
        self._lag_measured = 0.0
        # Every blocking call on the consumer runs on this one thread: confluent-kafka lets one
        # thread at a time into a consumer, so a commit made on the event loop while another
        # thread waited in consume() held the loop up to that wait (100 ms stalls at 1,000/s).
        self._kafka_thread = ThreadPoolExecutor(1, thread_name_prefix="decider-kafka")

    async def on_start(self) -> None:
        self._consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": self.group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "on_commit": self._on_commit,
            # The broker should answer a waiting fetch as soon as an event arrives, but here it
            # often held it to the end of its wait (events 100 ms old at 1,000/s with 100 ms):
            # a short wait bounds that; batches still come from what has queued up.
            "fetch.wait.max.ms": 10})
        self._consumer.subscribe(self.topics)
        self._running = self.add_future(self._run())

    async def on_stop(self) -> None:
        self._stopping = True
        running = self._running
        if running is not None and not running.done():
            if not self.ready.is_set():
                running.cancel()  # still waiting for the policies: nothing decided yet
            await asyncio.wait([running], timeout=60)  # else the batch in hand is finished
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await asyncio.get_running_loop().run_in_executor(self._kafka_thread, self._close,
                                                             consumer, self._committed)
        self._kafka_thread.shutdown()
        self.output.close()

    @staticmethod
    def _close(consumer: Consumer, committed: list[TopicPartition] | None) -> None:
        if committed:  # the last asynchronous commit, made sure of
            try:
                consumer.commit(offsets=committed, asynchronous=False)
            except KafkaException as exc:
                log.warning("committing decided events failed (%s): they will be decided "
                            "again", exc)
        consumer.close()  # what was committed stays; the rest is decided again

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        loop = asyncio.get_running_loop()
        await self.ready.wait()  # decide nothing before the policies are restored
        committing: asyncio.Task[None] | None = None
        handle = self.handle
        while not (self._stopping or self.should_stop):
            # librdkafka fetches in its own threads: take what it has queued; when nothing is,
            # wait (without the GIL, off the loop) for the next event to arrive.
            messages = await loop.run_in_executor(self._kafka_thread, self._take, consumer)
            if not messages:
                continue
            offsets: dict[tuple[str, int], int] = {}
            started, count = time.perf_counter(), 0
            for m in messages:
                if m.error() is not None:  # a fetch problem librdkafka reports and retries
                    log.warning("consuming events: %s", m.error())
                    continue
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                assert topic is not None and partition is not None and offset is not None
                # on_event never raises: bad messages go to the DLQ with their offsets.
                await handle(RawMessage(topic, partition, offset, m.key(), m.value()))
                offsets[(topic, partition)] = offset + 1
                count += 1
            if not count:
                continue
            await self.after_batch()  # what the batch leaves for later decisions, published
            DECIDE_SECONDS.observe((time.perf_counter() - started) / count)
            # The next batch is decided while this one's outputs are delivered; its offsets are
            # committed once they are (and after the batch before it: offsets only move on).
            committing = asyncio.ensure_future(self._commit(offsets, committing))
        if committing is not None:
            await asyncio.shield(committing)

    async def _commit(self, offsets: dict[tuple[str, int], int],
                      previous: asyncio.Task[None] | None) -> None:
        consumer = self._consumer
        assert consumer is not None
        if previous is not None:
            await previous
        try:
            await self.output.delivered()  # outputs in Kafka before their inputs count as done
        except Exception as exc:
            log.critical("stopping: %s; the batch stays uncommitted", exc)
            self._committed = None
            await self.crash(exc)
            return
        if self._committed is None:
            return  # an earlier batch was lost: nothing after it counts as done
        self._committed = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        now = time.monotonic()
        measure = now - self._lag_measured >= 1.0
        if measure:
            self._lag_measured = now
        await asyncio.get_running_loop().run_in_executor(
            self._kafka_thread, self._commit_now, consumer, self._committed, measure)

    def _take(self, consumer: Consumer) -> list[Message]:
        """What librdkafka has queued (up to a batch), else the next event within 100 ms."""
        messages = consumer.consume(self.max_batch, 0)
        if not messages:
            messages = consumer.consume(1, 0.1)
            if messages:
                messages += consumer.consume(self.max_batch - 1, 0)
        return messages

    def _commit_now(self, consumer: Consumer, offsets: list[TopicPartition],
                    measure: bool) -> None:
        try:
            # Asynchronous: librdkafka sends commits in order; a failure comes to _on_commit.
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._on_commit(exc.args[0], offsets)
        if measure:
            LAG.set(self._behind(consumer))

    @staticmethod
    def _on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            # A rebalance took the partitions: their new owner decides the tail again.
            log.warning("committing decided events failed (%s): they will be decided again",
                        error)

    @staticmethod
    def _behind(consumer: Consumer) -> int:
        behind = 0
        for tp in consumer.position(consumer.assignment()):
            high = consumer.get_watermark_offsets(tp, cached=True)[1] if tp.offset >= 0 else -1
            if high >= 0:
                behind += max(0, high - tp.offset)
        return behind
