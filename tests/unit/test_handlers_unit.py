"""The stream worker's handlers (streams/worker/handlers.py) over list publishers and a fake clock:
what one event becomes on which topic with which key, learning in Discover end to end through
the group's writer, refused senders' dead letters, and revoked partitions' waiting events.
(tests/unit/test_handlers.py holds the failure paths; these are the adapter's plain effects.)"""

from __future__ import annotations

import time
from typing import Any

from schemas import (
    ChangeKind,
    Decision,
    Envelope,
    ExecEvent,
    GroupPolicy,
    LearnRequest,
    Mode,
    ProfileChange,
    Verdict,
    Workload,
    WorkloadKind,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import DLQ, EXEC, POLICY, POLICY_UPDATES, PROFILE_CHANGES, VERDICTS, WORKLOADS
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.provenance import Provenance
from streams.worker.session import DecisionSession
from tests.unit.test_handlers import Clock, FakePublisher, run
from transport.signing import Keyring, Signer

KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:1", topic_prefix="u1.")
WL = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
              namespace="demo", service="web", image="busybox")
GROUP = "nv.web.demo"
_offsets = iter(range(10**9))


class Publisher(FakePublisher):
    """A list publisher that reads the topics back without the prefix."""

    def on(self, topic: str) -> list[Envelope]:
        return super().on(KAFKA.topic(topic))

    def keys(self, topic: str) -> list[bytes]:
        return [k for t, k, _ in self.sent if t == KAFKA.topic(topic)]


def make(**kw: Any) -> tuple[Handlers, Publisher, Publisher, Clock]:
    agents, out, clock = Publisher(), Publisher(), Clock()
    h = Handlers(session=DecisionSession(), publisher=agents, decisions=out, kafka=KAFKA, **kw)
    h.waiting.clock = clock
    h.ready.set()
    return h, agents, out, clock


def msg(topic: str, payload: Any, *, key: str, partition: int = 0, event_id: str = "",
        headers: Any = None, node: str = "node-1") -> RawMessage:
    offset = next(_offsets)
    env = Envelope.wrap(payload, event_id=event_id or f"e{offset}", node=node, ts=time.time())
    value = encode(env)
    if headers == "sign":
        headers = Signer.for_node(RING.node_keys(node)).headers(KAFKA.topic(topic),
                                                                key.encode(), value)
    return RawMessage(KAFKA.topic(topic), partition, offset, key.encode(), value, headers)


def exec_msg(path: str = "/bin/ls", workload: str = WL.id, **kw: Any) -> RawMessage:
    event = ExecEvent(workload_id=workload, pid=1, path=path, name=path.rsplit("/", 1)[-1])
    return msg(EXEC.name, event, key=workload, **kw)


def announce(h: Handlers, workload: Workload = WL) -> None:
    h.on_workload(Envelope.wrap(workload, event_id=f"wl-{workload.id}", node=workload.node,
                                ts=time.time()), workload.id)


RING = Keyring.generate()


def test_an_exec_of_a_known_workload_is_one_verdict_keyed_by_its_node() -> None:
    h, agents, out, _ = make()
    announce(h)
    event = exec_msg(event_id="ex-1")
    run(h.on_event(event))
    (verdict,) = out.on(VERDICTS.name)
    assert out.keys(VERDICTS.name) == [b"node-1"]  # the partition the node's collector reads
    decision = verdict.payload
    assert isinstance(decision, Decision)
    assert (decision.event_id, decision.workload_id, decision.node, decision.pid) == (
        "ex-1", WL.id, "node-1", 1)
    assert verdict.node == "streams" and verdict.event_id == "ex-1"
    # nothing on the agents' publisher: the decider's outputs go with its own producer
    assert agents.sent == [] and out.on(DLQ.name) == []
    assert all(t.startswith("u1.") for t, _, _ in out.sent)


def test_learning_in_discover_makes_one_profile_change_through_the_groups_writer() -> None:
    h, agents, out, _ = make()

    async def go() -> None:
        # the workload's announcement: the writer makes its learned group (in Discover)
        await h.on_workload_announcement(msg(WORKLOADS.name, WL, key=WL.id))
        (created,) = agents.on(POLICY_UPDATES.name)
        await h.on_update(RawMessage(KAFKA.topic(POLICY_UPDATES.name), 0, next(_offsets),
                                     GROUP.encode(), encode(created)))
        await h.on_event(exec_msg(event_id="first-ls"))
        await h.on_event(exec_msg(event_id="second-ls"))  # learned already: no second learn
    run(go())
    decisions = [e.payload for e in out.on(VERDICTS.name)]
    assert [(d.event_id, d.verdict, d.mode) for d in decisions] == [  # type: ignore[union-attr]
        ("first-ls", Verdict.LEARN, Mode.DISCOVER), ("second-ls", Verdict.ALLOW, Mode.DISCOVER)]
    (learn,) = out.on(POLICY_UPDATES.name)
    assert isinstance(learn.payload, LearnRequest) and out.keys(POLICY_UPDATES.name) == [
        GROUP.encode()]
    assert (learn.payload.group, learn.payload.path) == (GROUP, "/bin/ls")
    changes_before = len(agents.on(PROFILE_CHANGES.name))
    policies_before = len(agents.on(POLICY.name))

    async def write() -> None:  # the writer applies it, once, even if it is delivered twice
        wire = encode(learn)
        for _ in range(2):
            await h.on_update(RawMessage(KAFKA.topic(POLICY_UPDATES.name), 0, next(_offsets),
                                         GROUP.encode(), wire))
    run(write())
    changes = [e.payload for e in agents.on(PROFILE_CHANGES.name)][changes_before:]
    assert [(c.change, c.rule.path if c.rule else "") for c in changes  # type: ignore[union-attr]
            ] == [(ChangeKind.RULE_LEARNED, "/bin/ls")]
    assert isinstance(changes[0], ProfileChange) and changes[0].cause_event_id == "first-ls"
    policies = [e.payload for e in agents.on(POLICY.name)][policies_before:]
    assert len(policies) == 1 and isinstance(policies[0], GroupPolicy)
    assert "/bin/ls" in {r.path for r in policies[0].rules}
    assert h.published[GROUP].version == policies[0].version


def test_refused_senders_go_to_the_dlq_with_their_partition_and_offset() -> None:
    h, _, out, _ = make(provenance=Provenance(RING))
    announce(h)
    unsigned = exec_msg(partition=3, event_id="unsigned")
    other_node = exec_msg(partition=3, event_id="other", headers="sign", node="node-2")
    good = exec_msg(partition=3, event_id="good", headers="sign")

    async def go() -> None:
        for m in (unsigned, other_node, good):
            await h.on_event(m)
    run(go())
    assert [d.payload.event_id for d in out.on(VERDICTS.name)] == ["good"]  # type: ignore[union-attr]
    letters = [e.payload for e in out.on(DLQ.name)]
    assert [(e.topic, e.partition, e.offset) for e in letters] == [  # type: ignore[union-attr]
        (KAFKA.topic(EXEC.name), 3, unsigned.offset), (KAFKA.topic(EXEC.name), 3,
                                                        other_node.offset)]
    assert all(e.stage == "streams" for e in letters)  # type: ignore[union-attr]
    assert out.keys(DLQ.name) == [KAFKA.topic(EXEC.name).encode()] * 2


def test_a_revoked_partition_drops_its_waiting_events_and_the_others_still_wait() -> None:
    h, _, out, clock = make(unknown_workload_wait_s=3.0)
    late = Workload(id="late", kind=WorkloadKind.CONTAINER, node="node-1", name="late",
                    namespace="demo", service="late", image="busybox")

    async def go() -> None:
        await h.on_event(exec_msg(workload="late", partition=0, event_id="p0"))
        await h.on_event(exec_msg(workload="late", partition=1, event_id="p1"))
        await h.on_event(exec_msg(workload="ghost", partition=1, event_id="ghost"))
    run(go())
    assert len(h.waiting) == 3 and set(h.waiting_floors()) == {
        (KAFKA.topic(EXEC.name), 0), (KAFKA.topic(EXEC.name), 1)}
    h.drop_partitions({(KAFKA.topic(EXEC.name), 1)})
    assert len(h.waiting) == 1 and list(h.waiting_floors()) == [(KAFKA.topic(EXEC.name), 0)]
    # the revoked ones are neither decided when announced nor dead-lettered when their wait ends
    announce(h, late)
    assert run(h.tick()) is True
    assert [e.payload.event_id for e in out.on(VERDICTS.name)] == ["p0"]  # type: ignore[union-attr]
    clock.now += 10
    assert run(h.tick()) is False
    assert out.on(DLQ.name) == [] and len(h.waiting) == 0


def test_an_unknown_workloads_event_waits_only_as_long_as_the_clock_says() -> None:
    h, _, out, clock = make(unknown_workload_wait_s=2.0)
    run(h.on_event(exec_msg(workload="ghost", event_id="ghost", partition=5)))
    clock.now += 1.999
    assert run(h.tick()) is False and len(h.waiting) == 1
    clock.now += 0.002
    assert run(h.tick()) is True
    (letter,) = [e.payload for e in out.on(DLQ.name)]
    assert (letter.partition, "not announced within 2 s" in letter.error) == (  # type: ignore[union-attr]
        5, True)
    assert out.on(VERDICTS.name) == []
