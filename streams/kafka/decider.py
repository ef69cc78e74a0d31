"""The hot path of the stream app: exec and file events, decided in batches.

Faust's stream machinery costs about 250 us per message on this class of machine (an agent that
does nothing peaks at ~3,900 messages/s; bench/stream.py), and aiokafka tens of microseconds more,
against ~40 us to decide an event. So the two event topics are read by this Faust service with a
confluent-kafka (librdkafka) consumer, in batches: each batch is decided in order (per partition,
so per workload), its outputs are handed to the decider's own producer (`KafkaOutput`), that
producer is flushed and every output's delivery checked, and only then are the batch's offsets
committed. An output that could not be delivered because Kafka is not taking outputs stops the
worker with its batch uncommitted (a restarted worker decides it again) rather than count it as
done; so does a crash between flush and commit, with the same results and ids. An output Kafka
refuses for itself (too large) is dead-lettered and the batch goes on (`event_output.py`).

Events that wait aside for their workload's announcement (`streams.worker.handlers.SideBuffer`) hold
their partition's commit back: for each partition the decider commits the offset after the last
event it took, or the offset of the oldest event still waiting there, whichever is lower. A
waiting event is therefore never counted as done before it is decided (or dead-lettered) and
that outcome delivered; after a crash the next owner of the partition reads again from the
oldest waiting event, and decides again the events after it that were already decided (the
same decisions with the same ids, as for any uncommitted tail). Nothing waits longer than
`unknown_workload_wait_s`, so the commit of a partition is never held back further than that.
When a rebalance takes a partition away, its waiting events are dropped here: its new owner
starts from the held-back commit and reads them again.

The decider's loop beats (`beat`) at least every 100 ms while it runs; if the loop ends with an
error it is kept in `failure`, reported (`on_failure`), and the service crashes, which stops
the worker with a non-zero status rather than leave it running without deciding.

The consumer group is `<app id>-events`: workers started together share the event partitions;
the remaining Faust agents (workload announcements, the policy writer) keep the app's own group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mode
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Gauge, Histogram

from schemas.connections import KafkaConnection
from streams.kafka.event_output import KafkaOutput
from streams.worker.handlers import RawMessage

__all__ = ["EventDecider", "commit_points"]

log = logging.getLogger("procwarden.streams.decider")

LAG = Gauge("procwarden_streams_lag_messages", "Exec and file events not yet decided")
DECIDE_SECONDS = Histogram("procwarden_streams_decide_seconds",
                           "Time to decide one event and hand its outputs to the producer "
                           "(each batch's average)",
                           buckets=(0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                    0.005, 0.01, 0.025))


TopicKey = tuple[str, int]


def commit_points(taken: Mapping[TopicKey, int], floors: Mapping[TopicKey, int],
                  points: dict[TopicKey, int]) -> dict[TopicKey, int]:
    """The offsets to commit now, per partition: after the last event taken, but never past the
    oldest event still waiting (`floors`), and only those that moved on since `points` (which
    is updated)."""
    out: dict[TopicKey, int] = {}
    for tp, after in taken.items():
        floor = floors.get(tp)
        point = after if floor is None or floor > after else floor
        if point > points.get(tp, -1):
            points[tp] = out[tp] = point
    return out


async def _nothing_waits() -> bool:
    return False


class EventDecider(mode.Service):
    def __init__(self, kafka: KafkaConnection, topics: list[str], group_id: str,
                 handle: Callable[[RawMessage], Awaitable[None]],
                 after_batch: Callable[[], Awaitable[None]],
                 output: KafkaOutput, ready: asyncio.Event, max_batch: int = 2000, *,
                 tick: Callable[[], Awaitable[bool]] = _nothing_waits,
                 floors: Callable[[], Mapping[TopicKey, int]] = dict,
                 revoked: Callable[[set[TopicKey]], None] = lambda _: None,
                 on_failure: Callable[[BaseException], None] = lambda _: None,
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
        self.tick = tick  # between batches: what waited aside, decided or dead-lettered
        self.floors = floors  # per partition, the oldest offset still waiting aside
        self.revoked = revoked
        self.on_failure = on_failure
        self.beat = 0.0  # monotonic time of the loop's last turn; 0 until it runs
        self.failure: BaseException | None = None
        self._consumer: Consumer | None = None
        self._running: asyncio.Future[None] | None = None
        self._stopping = False
        # the offsets last committed; None once a batch's outputs were lost
        self._committed: dict[TopicKey, int] | None = {}
        # per partition: the offset after the last event taken, and the last commit point
        self._taken: dict[TopicKey, int] = {}
        self._points: dict[TopicKey, int] = {}
        # partitions a rebalance took, noted in the consumer's thread, acted on in the loop
        self._revoked_lock = threading.Lock()
        self._revoked: set[TopicKey] = set()
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
        self._consumer.subscribe(self.topics, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        self._running = self.add_future(self._run())

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._revoked_lock:
            self._revoked.update((tp.topic, tp.partition) for tp in partitions)

    def _take_revoked(self) -> set[TopicKey]:
        with self._revoked_lock:
            revoked, self._revoked = self._revoked, set()
        return revoked

    @property
    def running(self) -> bool:
        """The loop runs: started, not ended, not failed."""
        return (self._running is not None and not self._running.done()
                and self.failure is None and self.beat > 0)

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
    def _close(consumer: Consumer, committed: dict[TopicKey, int] | None) -> None:
        if committed:  # the last asynchronous commit, made sure of
            try:
                consumer.commit(offsets=[TopicPartition(t, p, o)
                                         for (t, p), o in committed.items()],
                                asynchronous=False)
            except KafkaException as exc:
                log.warning("committing decided events failed (%s): they will be decided "
                            "again", exc)
        consumer.close()  # what was committed stays; the rest is decided again

    async def _run(self) -> None:
        try:
            await self._decide_batches()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            log.critical("the decider's loop stopped: %r", exc, exc_info=exc)
            self.on_failure(exc)
            raise

    async def _decide_batches(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        loop = asyncio.get_running_loop()
        await self.ready.wait()  # decide nothing before the policies are restored
        committing: asyncio.Task[None] | None = None
        handle = self.handle
        taken = self._taken
        self.beat = time.monotonic()
        while not (self._stopping or self.should_stop):
            # librdkafka fetches in its own threads: take what it has queued; when nothing is,
            # wait (without the GIL, off the loop) for the next event to arrive.
            messages = await loop.run_in_executor(self._kafka_thread, self._take, consumer)
            self.beat = time.monotonic()
            revoked = self._take_revoked()
            if revoked:
                self.revoked(revoked)
                for tp in revoked:
                    taken.pop(tp, None)
                    self._points.pop(tp, None)
                    if self._committed is not None:
                        self._committed.pop(tp, None)
            acted = await self.tick()
            started, count = time.perf_counter(), 0
            for m in messages:
                if m.error() is not None:  # a fetch problem librdkafka reports and retries
                    log.warning("consuming events: %s", m.error())
                    continue
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                assert topic is not None and partition is not None and offset is not None
                # on_event never raises: bad messages go to the DLQ with their offsets.
                await handle(RawMessage(topic, partition, offset, m.key(), m.value(),
                                        m.headers()))
                taken[(topic, partition)] = offset + 1
                count += 1
            if not count and not acted:
                continue
            await self.after_batch()  # what the batch leaves for later decisions, published
            if count:
                DECIDE_SECONDS.observe((time.perf_counter() - started) / count)
            offsets = commit_points(taken, self.floors(), self._points)
            # The next batch is decided while this one's outputs are delivered; its offsets are
            # committed once they are (and after the batch before it: offsets only move on).
            committing = asyncio.ensure_future(self._commit(offsets, committing))
        if committing is not None:
            await asyncio.shield(committing)

    async def _commit(self, offsets: dict[TopicKey, int],
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
            self.failure = exc
            self.on_failure(exc)
            await self.crash(exc)
            return
        if self._committed is None:
            return  # an earlier batch was lost: nothing after it counts as done
        if not offsets:
            return
        self._committed.update(offsets)
        now = time.monotonic()
        measure = now - self._lag_measured >= 1.0
        if measure:
            self._lag_measured = now
        await asyncio.get_running_loop().run_in_executor(
            self._kafka_thread, self._commit_now, consumer,
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()], measure)

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
