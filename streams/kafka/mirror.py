"""Every worker's full copy of the group policies, workloads and process states.

A consumer outside any consumer group reads every partition of the compacted `procwarden.policy`,
`procwarden.workloads` and `procwarden.process-state` topics from the beginning and feeds the
decision session. Workers decide nothing until the mirror has caught up with the end offsets it
saw at start, so the first decision after a restart already uses the restored policies and what
earlier events of each workload left behind. (Faust's GlobalTable would do this,
but it stores Faust's own framing and is known to loop in recovery with several workers.)

Every record is applied inside `transport.MessageGuard`: one that cannot be decoded or applied
(a poisoned record on a compacted topic stays there for every worker's replay) is skipped,
counted (`procwarden_streams_mirror_skipped_total`) and dead-lettered, and the mirror goes on:
it cannot keep a worker from catching up and deciding. If the mirror's own loop stops (Kafka
refused it), `task` ends with the error and the worker stops with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter

from schemas import (
    DlqEntry,
    Envelope,
    GroupPolicy,
    ProcessSnapshot,
    Workload,
    decode_envelope,
)
from schemas.connections import KafkaConnection
from schemas.topics import POLICY, PROCESS_STATE, WORKLOADS
from streams.kafka.kafka_options import aiokafka_options
from streams.worker.provenance import Provenance, RawHeaders
from transport import DlqLimits, MessageGuard, Refused

_MIRRORED = (POLICY, WORKLOADS, PROCESS_STATE)

__all__ = ["PolicyMirror"]

log = logging.getLogger("procwarden.streams.mirror")

SKIPPED = Counter("procwarden_streams_mirror_skipped_total",
                  "Records of the compacted topics the mirror could not apply (skipped, "
                  "dead-lettered)", ["topic"])


async def _no_dead_letters(entry: DlqEntry) -> None:
    return None


class PolicyMirror:
    def __init__(self, kafka: KafkaConnection, *,
                 on_policy: Callable[[str, GroupPolicy | None], None],
                 on_workload: Callable[[Envelope | None, str], None],
                 on_process_state: Callable[[str, ProcessSnapshot | None], None],
                 dead_letter: Callable[[DlqEntry], Awaitable[None]] = _no_dead_letters,
                 limits: DlqLimits | None = None, provenance: Provenance | None = None,
                 known_workload: Callable[[str], Workload | None] = lambda _: None) -> None:
        self.kafka = kafka
        # Who may write each compacted topic (streams/worker/provenance.py); the default believes
        # unsigned records (unit tests of other concerns).
        self.provenance = provenance or Provenance(None, accept_unsigned=True)
        self.known_workload = known_workload
        self.on_policy = on_policy
        self.on_workload = on_workload
        self.on_process_state = on_process_state
        self.caught_up = asyncio.Event()
        self.invalid = 0
        self.applied = 0
        self.guard = MessageGuard("streams", dead_letter, limits=limits or DlqLimits())
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The mirror's loop, once started: it ends only with an error (or when stopped)."""
        return self._task

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None,
                                          auto_offset_reset="earliest",
                                          **aiokafka_options(self.kafka))
        await self._consumer.start()
        tps = await self._partitions()
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(dict(ends)))

    async def _partitions(self, timeout: float = 60.0) -> list[TopicPartition]:
        """Every partition of the mirrored topics. Just after the topics were created the
        broker may not list them yet: ask again until it does."""
        assert self._consumer is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            tps = []
            for spec in _MIRRORED:
                topic = self.kafka.topic(spec.name)
                parts = self._consumer.partitions_for_topic(topic)
                if not parts:
                    await self._consumer._client.force_metadata_update()
                    parts = self._consumer.partitions_for_topic(topic) or set()
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            if {tp.topic for tp in tps} == {self.kafka.topic(s.name) for s in _MIRRORED}:
                return tps
            if asyncio.get_running_loop().time() > deadline:
                names = ", ".join(s.name for s in _MIRRORED)
                raise RuntimeError(f"not all of the topics {names} exist "
                                   "(run `procwarden stack up`, or create them)")
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            self.caught_up.set()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    await self.apply(tp.topic, tp.partition, record.offset, record.key,
                                     record.value, record.headers)
                if tp in pending and records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            if pending and all(await self._positions_reached(consumer, pending, ends)):
                pending.clear()
            if not pending and not self.caught_up.is_set():
                log.info("policy mirror caught up (%d records)", self.applied)
                self.caught_up.set()

    @staticmethod
    async def _positions_reached(consumer: AIOKafkaConsumer, pending: set[TopicPartition],
                                 ends: dict[TopicPartition, int]) -> list[bool]:
        return [await consumer.position(tp) >= ends[tp] for tp in pending]

    async def apply(self, topic: str, partition: int, offset: int, key: bytes | None,
                    value: bytes | None, headers: RawHeaders = None) -> None:
        """Apply one record; one that cannot be is skipped, counted and dead-lettered."""
        refused = self.guard.refused
        await self.guard.run_async(lambda: self._apply_now(topic, key, value, headers),
                                   topic=topic, partition=partition, offset=offset, key=key,
                                   value=value)
        if self.guard.refused != refused:
            self.invalid += 1
            SKIPPED.labels(topic).inc()

    async def _apply_now(self, topic: str, key: bytes | None, value: bytes | None,
                         headers: RawHeaders) -> None:
        self._apply(topic, key, value, headers)

    def _apply(self, topic: str, key: bytes | None, value: bytes | None,
               headers: RawHeaders = None) -> None:
        name = key.decode(errors="replace") if key else ""
        is_policy = topic == self.kafka.topic(POLICY.name)
        is_state = topic == self.kafka.topic(PROCESS_STATE.name)
        node: str | None = None
        if is_policy or is_state:  # only the stream app writes these
            self.provenance.from_streams(topic, key, value, headers)
        else:  # a node's collector, for its own workloads
            node = self.provenance.node_of(topic, key, value, headers)
            known = self.known_workload(name)
            if value is None and node is not None and known is not None:
                self.provenance.check_workload(node, known, None)
        if value is None:  # a tombstone: the group or workload is gone
            if is_policy:
                self.on_policy(name, None)
            elif is_state:
                self.on_process_state(name, None)
            else:
                self.on_workload(None, name)
            return
        env = decode_envelope(value)
        if is_policy and isinstance(env.payload, GroupPolicy):
            self.on_policy(env.payload.name, env.payload)
        elif is_state and isinstance(env.payload, ProcessSnapshot):
            self.on_process_state(env.payload.workload_id, env.payload)
        elif not is_policy and not is_state and isinstance(env.payload, Workload):
            self.provenance.check_speaker(node, env)
            self.provenance.check_workload(node, env.payload, self.known_workload(env.payload.id))
            self.on_workload(env, env.payload.id)
        else:
            raise Refused(f"a {env.kind.value} message does not belong on {topic}")
        self.applied += 1
