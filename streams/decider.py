"""The hot path of the stream app: exec and file events, decided in batches.

Faust's stream machinery costs about 250 us per message on this class of machine (an agent that
does nothing peaks at ~3,900 messages/s; bench/stream.py), ten times what deciding costs. So the
two event topics are read by this Faust service with aiokafka directly, in batches: each batch is
decided in order (per partition, so per workload), its outputs are handed to the app's producer,
the producer is flushed and every output's delivery checked, and only then are the batch's
offsets committed. An output that could not be delivered stops the worker with its batch
uncommitted (a restarted worker decides it again) rather than count it as done; so does a crash
between flush and commit, with the same results and ids.

The consumer group is `<app id>-events`: workers started together share the event partitions;
the remaining Faust agents (workload announcements, the policy writer) keep the app's own group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Gauge, Histogram

from schemas.connections import KafkaConnection
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
                 flush: Callable[[], Awaitable[None]], ready: asyncio.Event,
                 consumer_options: dict[str, Any], max_batch: int = 2000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.handle = handle
        self.after_batch = after_batch
        self.flush = flush
        self.ready = ready
        self.consumer_options = consumer_options
        self.max_batch = max_batch
        self.decided = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self.max_batch,
            **self.consumer_options)
        await self._consumer.start()
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()  # what was committed stays; the rest is decided again

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        await self.ready.wait()  # decide nothing before the policies are restored
        committing: asyncio.Task[None] | None = None
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=100, max_records=self.max_batch)
            if not batches:
                continue
            offsets = {}
            started, count = time.perf_counter(), 0
            for tp, records in batches.items():
                for r in records:
                    # on_event never raises: bad messages go to the DLQ with their offsets.
                    await self.handle(RawMessage(r.topic, r.partition, r.offset, r.key,
                                                 r.value))
                offsets[tp] = records[-1].offset + 1
                count += len(records)
            self.decided += count
            await self.after_batch()  # what the batch leaves for later decisions, published
            DECIDE_SECONDS.observe((time.perf_counter() - started) / count)
            # The next batch is decided while this one's outputs are delivered; its offsets are
            # committed once they are (and after the batch before it: offsets only move on).
            committing = asyncio.ensure_future(self._commit(offsets, committing))
        if committing is not None:
            await asyncio.shield(committing)

    async def _commit(self, offsets: dict[Any, int], previous: asyncio.Task[None] | None
                      ) -> None:
        consumer = self._consumer
        assert consumer is not None
        if previous is not None:
            await previous
        try:
            await self.flush()  # the outputs are in Kafka before the inputs count as done
        except Exception as exc:
            log.critical("stopping: %s; the batch stays uncommitted", exc)
            await self.crash(exc)
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: their new owner decides the tail again.
            log.warning("committing decided events failed (%s): they will be decided again", exc)
        behind = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                behind += high - await consumer.position(tp)
        LAG.set(behind)
