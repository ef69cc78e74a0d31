"""Who may tell the stream worker what, on the real Kafka with the real worker (issue 22).

Before: an event sent "from node-a" for node-b's container made node-b block a process, and in
Discover taught node-b's group a rule; a workload re-announced by another node moved its
verdicts there; a GroupPolicy on policy-updates replaced a group wholesale; a process state
with a higher seq won. Each is sent here, signed with the keys its sender really holds, and
refused; the legitimate records beside them are decided, and their verdicts are signed for
their node only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from procwarden.keys import local_keyring
from schemas import (
    Baseline,
    Decision,
    DlqEntry,
    Envelope,
    ExecEvent,
    GroupKind,
    GroupPolicy,
    Mode,
    ProcessSnapshot,
    Verdict,
    Workload,
    WorkloadKind,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import DLQ, EXEC, POLICY, POLICY_UPDATES, PROCESS_STATE, VERDICTS, WORKLOADS
from tests.integration.streamkit import Pipeline
from transport.signing import BadSignature, Keyring, Signer, Verifier

GROUP = "nv.db.prov"
B = Workload(id="c-prov-b", kind=WorkloadKind.CONTAINER, node="node-b", name="db",
             namespace="prov", service="db", image="busybox")


class Sender:
    """Produces records signed as someone: a node (with its own keys) or nobody."""

    def __init__(self, pipe: Pipeline, ring: Keyring) -> None:
        self.pipe, self.ring, self.seq = pipe, ring, 0
        self.producer = Producer({**pipe.kafka.confluent_config(), "enable.idempotence": True,
                                  "partitioner": "murmur2_random"})

    def send(self, topic: str, key: str, payload: object, *, node: str,
             signer: str | None) -> str:
        self.seq += 1
        event_id = f"prov-{self.seq}"
        value = encode(Envelope.wrap(payload, event_id=event_id, node=node,  # type: ignore[arg-type]
                                     ts=time.time(), cluster="test"))
        full = self.pipe.topic(topic)
        headers = None
        if signer is not None:
            headers = Signer.for_node(self.ring.node_keys(signer)).headers(
                full, key.encode(), value)
        self.producer.produce(full, key=key.encode(), value=value, headers=headers)
        assert self.producer.flush(30) == 0
        return event_id


@pytest.fixture
def pipe(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka, tmp_path)
    p.start_worker(STREAMS_ACCEPT_UNSIGNED="false")
    try:
        yield p
    finally:
        p.stop_workers()


def test_a_node_cannot_make_another_nodes_workload_block_or_learn(pipe: Pipeline) -> None:
    ring = local_keyring()  # the worker's (the local one)
    s = Sender(pipe, ring)
    s.send(WORKLOADS.name, B.id, B, node="node-b", signer="node-b")
    # node-a's own signature, for node-b's container: as a node-a event, and claiming node-b
    forged = [s.send(EXEC.name, B.id, ExecEvent(workload_id=B.id, pid=40 + i, start_time=9,
                                                path="/tmp/backdoor", name="backdoor"),
                     node=node, signer="node-a")
              for i, node in enumerate(("node-a", "node-b"))]
    unsigned = s.send(EXEC.name, B.id, ExecEvent(workload_id=B.id, pid=50, start_time=9,
                                                 path="/tmp/backdoor2", name="backdoor2"),
                      node="node-b", signer=None)
    # node-a re-announces node-b's workload as its own: it must not move
    moved = Workload(id=B.id, kind=B.kind, node="node-a", name=B.name, namespace=B.namespace,
                     service=B.service, image=B.image)
    s.send(WORKLOADS.name, B.id, moved, node="node-a", signer="node-a")
    real = s.send(EXEC.name, B.id, ExecEvent(workload_id=B.id, pid=60, start_time=9,
                                             path="/bin/ls", name="ls"),
                  node="node-b", signer="node-b")
    env, msg = pipe.wait_for(VERDICTS.name, lambda e: e.event_id == real, timeout=60)
    decision = env.payload
    assert isinstance(decision, Decision) and decision.node == "node-b"
    assert decision.verdict is Verdict.LEARN  # Discover: the real exec is learned
    # The verdict is signed for node-b, and only node-b's keys accept it.
    headers = msg.headers()
    Verifier.for_node(ring.node_keys("node-b")).verify(
        msg.topic(), msg.key(), msg.value(), headers, now=time.time())
    with pytest.raises(BadSignature):
        Verifier.for_node(ring.node_keys("node-a")).verify(
            msg.topic(), msg.key(), msg.value(), headers, now=time.time())
    verdicts = {e.event_id for e in pipe.read_all(VERDICTS.name)}
    assert not verdicts & {*forged, unsigned}
    letters = [e.payload for e in pipe.read_all(DLQ.name) if isinstance(e.payload, DlqEntry)]
    errors = " | ".join(letter.error for letter in letters)
    # (the re-announcement is refused twice: by the announcement agent and by the mirror)
    assert sum("signature refused" in letter.error for letter in letters) == 5, errors
    for reason in ("(workload)", "(node)", "(unsigned)"):
        assert reason in errors, errors
    assert "cannot take it over" in errors
    learned = [e.payload for e in pipe.read_all(POLICY.name)
               if isinstance(e.payload, GroupPolicy) and e.payload.name == GROUP]
    assert learned and all("/tmp/backdoor" not in r.path for p in learned for r in p.rules)
    assert any(r.path == "/bin/ls" for r in learned[-1].rules)


def test_only_the_stream_app_writes_policy_and_process_state(pipe: Pipeline) -> None:
    ring = local_keyring()
    s = Sender(pipe, ring)
    s.send(WORKLOADS.name, B.id, B, node="node-b", signer="node-b")
    pipe.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                  and e.payload.name == GROUP, timeout=60)
    wholesale = GroupPolicy(name=GROUP, kind=GroupKind.LEARNED, mode=Mode.MONITOR,
                            baseline=Baseline.BASIC, version=10_000)
    for topic in (POLICY_UPDATES.name, POLICY.name):
        for signer in ("node-b", None):
            s.send(topic, GROUP, wholesale, node="node-b", signer=signer)
    s.send(PROCESS_STATE.name, B.id, ProcessSnapshot(workload_id=B.id, seq=10**9,
                                                     risk={"60": "nc"}),
           node="node-b", signer="node-b")
    real = s.send(EXEC.name, B.id, ExecEvent(workload_id=B.id, pid=61, ppid=60, start_time=9,
                                             path="/bin/cat", name="cat"),
                  node="node-b", signer="node-b")
    env, _ = pipe.wait_for(VERDICTS.name, lambda e: e.event_id == real, timeout=60)
    assert isinstance(env.payload, Decision)
    assert env.payload.mode is Mode.DISCOVER  # the wholesale Monitor policy was not believed
    assert not env.payload.reason.startswith("suspicious")  # nor the forged risky parent
    letters = [e.payload for e in pipe.read_all(DLQ.name) if isinstance(e.payload, DlqEntry)]
    assert sum("signature refused" in letter.error for letter in letters) == 5, letters
