"""The policy mirror (streams/kafka/mirror.py) feeding the worker's handlers, record by record through
`apply` and through its own loop over a fake consumer: policies and workloads applied in the
order they come, stale copies and tombstones, records that do not belong on their topic or come
from the wrong node refused (dead-lettered, the mirror goes on), and "caught up" only once every
partition reached the end offsets seen at start.

The loop's consumer is built by `start` itself (`aiokafka.AIOKafkaConsumer`), so the fake
replaces that name in `streams.kafka.mirror`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import pytest
from aiokafka import TopicPartition

import streams.kafka.mirror
from schemas import (
    Baseline,
    Envelope,
    GroupKind,
    GroupPolicy,
    Mode,
    ProcessSnapshot,
    Workload,
    WorkloadKind,
    WorkloadState,
    encode,
)
from schemas.records import replace
from schemas.topics import POLICY, PROCESS_STATE, WORKLOADS
from streams.kafka.mirror import PolicyMirror
from streams.worker.handlers import Handlers
from streams.worker.provenance import Provenance
from streams.worker.session import DecisionSession
from tests.unit.test_handlers import KAFKA, FakePublisher, run
from transport.signing import Keyring, Signer

RING = Keyring.generate()
WEB = GroupPolicy(name="nv.web.demo", kind=GroupKind.LEARNED, mode=Mode.DISCOVER,
                  baseline=Baseline.BASIC, version=1)
WL = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
              namespace="demo", service="web", image="busybox")


def world(provenance: Provenance | None = None
          ) -> tuple[Handlers, PolicyMirror, FakePublisher]:
    out = FakePublisher()
    h = Handlers(session=DecisionSession(), publisher=FakePublisher(), decisions=out,
                 kafka=KAFKA)
    mirror = PolicyMirror(KAFKA, on_policy=h.on_policy, on_workload=h.on_workload,
                          on_process_state=h.on_process_state, dead_letter=h.dead_letter_entry,
                          provenance=provenance,
                          known_workload=h.session.workloads.get)  # as app.py wires it
    return h, mirror, out


def wire(payload: Any, node: str = "streams", event_id: str = "r") -> bytes:
    return encode(Envelope.wrap(payload, event_id=event_id, node=node, ts=1.0))


_offsets = iter(range(10**9))


async def apply(mirror: PolicyMirror, topic: str, key: str, value: bytes | None,
                headers: Any = None) -> int:
    offset = next(_offsets)
    await mirror.apply(KAFKA.topic(topic), 0, offset, key.encode(), value, headers)
    return offset


def test_policies_are_applied_in_order_and_a_stale_copy_changes_nothing() -> None:
    h, mirror, out = world()

    async def go() -> None:
        await apply(mirror, POLICY.name, WEB.name, wire(WEB))
        await apply(mirror, POLICY.name, WEB.name, wire(replace(WEB, version=2,
                                                                 mode=Mode.PROTECT)))
        await apply(mirror, POLICY.name, WEB.name, wire(replace(WEB, version=1,
                                                                 mode=Mode.MONITOR)))
    run(go())
    assert (h.published[WEB.name].version, h.published[WEB.name].mode) == (2, Mode.PROTECT)
    assert h.session.policies[WEB.name].mode is Mode.PROTECT
    assert mirror.applied == 3 and mirror.invalid == 0 and out.letters() == []


def test_a_policy_is_applied_under_its_own_name_whatever_its_records_key() -> None:
    h, mirror, _ = world()
    run(apply(mirror, POLICY.name, "not-its-name", wire(WEB)))
    assert list(h.published) == [WEB.name] and WEB.name in h.session.policies


def test_a_policy_tombstone_forgets_the_group_and_a_later_version_brings_it_back() -> None:
    h, mirror, _ = world()

    async def go() -> None:
        await apply(mirror, POLICY.name, WEB.name, wire(WEB))
        await apply(mirror, POLICY.name, WEB.name, None)
    run(go())
    assert WEB.name not in h.published and WEB.name not in h.session.policies
    run(apply(mirror, POLICY.name, WEB.name, wire(replace(WEB, version=5))))
    assert h.session.policies[WEB.name].version == 5


def test_workloads_are_applied_in_order_running_then_stopped_then_gone() -> None:
    h, mirror, _ = world()
    other = replace(WL, id="c-api-1", name="api", service="api")

    async def go() -> None:
        await apply(mirror, WORKLOADS.name, WL.id, wire(WL, node="node-1"))
        await apply(mirror, WORKLOADS.name, other.id, wire(other, node="node-1"))
    run(go())
    assert set(h.session.workloads) == {WL.id, other.id}
    run(apply(mirror, WORKLOADS.name, WL.id,
              wire(replace(WL, state=WorkloadState.STOPPED), node="node-1")))
    assert set(h.session.workloads) == {other.id}
    run(apply(mirror, WORKLOADS.name, other.id, None))  # compacted away
    assert h.session.workloads == {}
    assert mirror.applied == 3  # (a tombstone is not counted as applied)


def test_a_record_of_another_kind_than_its_topic_is_refused_and_the_mirror_goes_on() -> None:
    h, mirror, out = world()
    snapshot = ProcessSnapshot(workload_id=WL.id, seq=1)

    async def go() -> list[int]:
        return [await apply(mirror, WORKLOADS.name, WEB.name, wire(WEB)),
                await apply(mirror, POLICY.name, WL.id, wire(WL, node="node-1")),
                await apply(mirror, PROCESS_STATE.name, WL.id, wire(WEB)),
                await apply(mirror, POLICY.name, "x", wire(snapshot))]
    refused = run(go())
    run(apply(mirror, POLICY.name, WEB.name, wire(WEB)))
    assert h.session.workloads == {} and list(h.published) == [WEB.name]
    assert mirror.invalid == 4 and mirror.applied == 1
    letters = out.letters()
    assert [e.offset for e in letters] == refused
    assert [e.error.split(": ", 1)[1] for e in letters] == [
        f"a policy message does not belong on {KAFKA.topic(WORKLOADS.name)}",
        f"a workload message does not belong on {KAFKA.topic(POLICY.name)}",
        f"a policy message does not belong on {KAFKA.topic(PROCESS_STATE.name)}",
        f"a process_state message does not belong on {KAFKA.topic(POLICY.name)}"]


def _signed(topic: str, key: str, value: bytes, node: str) -> Any:
    return Signer.for_node(RING.node_keys(node)).headers(KAFKA.topic(topic), key.encode(),
                                                         value)


def test_a_node_cannot_take_over_or_delete_another_nodes_workload_in_the_mirror() -> None:
    h, mirror, out = world(Provenance(RING))
    mine = wire(WL, node="node-1")
    moved = wire(replace(WL, node="node-2"), node="node-2")

    async def go() -> None:
        await apply(mirror, WORKLOADS.name, WL.id, mine, _signed(WORKLOADS.name, WL.id, mine,
                                                                   "node-1"))
        await apply(mirror, WORKLOADS.name, WL.id, moved,
                    _signed(WORKLOADS.name, WL.id, moved, "node-2"))
        await apply(mirror, WORKLOADS.name, WL.id, None, Signer.for_node(
            RING.node_keys("node-2")).headers(KAFKA.topic(WORKLOADS.name), WL.id.encode(),
                                              None))
    run(go())
    assert h.session.workloads[WL.id].node == "node-1"
    assert mirror.invalid == 2 and len(out.letters()) == 2


class FakeRecord:
    def __init__(self, offset: int, key: bytes, value: bytes | None) -> None:
        self.offset, self.key, self.value, self.headers = offset, key, value, ()


class FakeConsumer:
    """A consumer outside any group over the three topics (one partition each), handing out
    the scripted batches; end offsets are what was scripted at start."""

    made: list[FakeConsumer] = []  # noqa: RUF012 (the instances the mirror made)

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.batches: deque[dict[TopicPartition, list[FakeRecord]]] = deque()
        self.ends: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        FakeConsumer.made.append(self)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.sought = tps

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends.get(tp, 0) for tp in tps}

    async def getmany(self, timeout_ms: int, max_records: int
                      ) -> dict[TopicPartition, list[FakeRecord]]:
        await asyncio.sleep(0.001)
        if not self.batches:
            return {}
        batch = self.batches.popleft()
        for tp, records in batch.items():
            self.positions[tp] = records[-1].offset + 1
        return batch

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)


def test_the_mirror_is_caught_up_only_once_every_partition_reached_its_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.kafka.mirror, "AIOKafkaConsumer", FakeConsumer)
    FakeConsumer.made.clear()
    h, mirror, _ = world()
    pol = TopicPartition(KAFKA.topic(POLICY.name), 0)
    wls = TopicPartition(KAFKA.topic(WORKLOADS.name), 0)
    script = [{pol: [FakeRecord(0, WEB.name.encode(), wire(WEB))]},
              {wls: [FakeRecord(0, WL.id.encode(), wire(WL, node="node-1"))]},
              {pol: [FakeRecord(1, WEB.name.encode(), wire(replace(WEB, version=2)))]}]

    async def go() -> None:
        seen: list[bool] = []
        real = FakeConsumer.getmany

        async def getmany(self: FakeConsumer, timeout_ms: int, max_records: int
                          ) -> dict[TopicPartition, list[FakeRecord]]:
            seen.append(mirror.caught_up.is_set())
            return await real(self, timeout_ms, max_records)

        monkeypatch.setattr(FakeConsumer, "getmany", getmany)
        # the end offsets at start: policy 2, workloads 1, process state 0 (empty)
        original_end = FakeConsumer.end_offsets

        async def ends(self: FakeConsumer, tps: list[TopicPartition]
                       ) -> dict[TopicPartition, int]:
            self.ends = {pol: 2, wls: 1}
            self.batches.extend(script)
            return await original_end(self, tps)

        monkeypatch.setattr(FakeConsumer, "end_offsets", ends)
        await mirror.start()
        (consumer,) = FakeConsumer.made
        assert consumer.config["group_id"] is None
        assert consumer.config["enable_auto_commit"] is False
        assert {tp.topic for tp in consumer.assigned} == {
            KAFKA.topic(s.name) for s in (POLICY, WORKLOADS, PROCESS_STATE)}
        try:
            await asyncio.wait_for(mirror.caught_up.wait(), 5)
        finally:
            await mirror.stop()
        # not caught up while any record before the end offsets was still to come
        assert seen[:3] == [False, False, False]
        assert h.published[WEB.name].version == 2 and WL.id in h.session.workloads
        assert mirror.applied == 3

    started = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - started < 5
