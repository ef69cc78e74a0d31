"""Who may tell the stream app what (streams/worker/provenance.py), through the worker's handlers and
its mirror with fake outputs. Each test is an attack of issue 22 that worked before."""

from __future__ import annotations

import dataclasses
import time

import pytest

from schemas import (
    Envelope,
    ExecEvent,
    GroupPolicy,
    ProcessSnapshot,
    ServiceConfig,
    Workload,
    WorkloadKind,
    encode,
)
from schemas.topics import EXEC, POLICY, POLICY_UPDATES, PROCESS_STATE, VERDICTS, WORKLOADS
from streams.kafka.mirror import PolicyMirror
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.provenance import Provenance, RecordSigner
from streams.worker.session import DecisionSession
from tests.unit.test_handlers import KAFKA, FakePublisher, run, sample
from transport.signing import BadSignature, Keyring, Signer, Verifier

RING = Keyring.generate()
A = Workload(id="c-a", kind=WorkloadKind.CONTAINER, node="node-a", name="web", namespace="demo",
             service="web", image="busybox")
B = Workload(id="c-b", kind=WorkloadKind.CONTAINER, node="node-b", name="db", namespace="demo",
             service="db", image="busybox")
_offsets = iter(range(10**9))


def _handlers() -> tuple[Handlers, FakePublisher, FakePublisher]:
    agents, out = FakePublisher(), FakePublisher()
    h = Handlers(session=DecisionSession(), publisher=agents, decisions=out, kafka=KAFKA,
                 provenance=Provenance(RING))
    h.ready.set()
    for wl in (A, B):  # as the mirror would have brought them
        h.on_workload(Envelope.wrap(wl, event_id=f"wl-{wl.id}", node=wl.node, ts=1.0), wl.id)
    return h, agents, out


def _msg(topic: str, payload: object, *, node: str, signer: str | None,
         key: str = "k") -> RawMessage:
    """A record whose envelope says `node`, signed by `signer` (a node, "streams" or None)."""
    env = Envelope.wrap(payload, event_id=f"e{next(_offsets)}", node=node,  # type: ignore[arg-type]
                        ts=time.time())
    value = encode(env)
    headers = None
    if signer == "streams":
        headers = Signer.for_streams(RING).headers(topic, key.encode(), value)
    elif signer is not None:
        headers = Signer.for_node(RING.node_keys(signer)).headers(topic, key.encode(), value)
    return RawMessage(topic, 0, next(_offsets), key.encode(), value, headers)


def _tampered(msg: RawMessage) -> RawMessage:
    return dataclasses.replace(msg, value=(msg.value or b"").replace(b'"pid":7', b'"pid":8'))


def _exec(workload: Workload, pid: int = 7) -> ExecEvent:
    return ExecEvent(workload_id=workload.id, pid=pid, path="/bin/ls", name="ls")


def _refusals(reason: str) -> float:
    return sample("procwarden_streams_refused_senders_total", reason=reason)


def test_an_event_is_decided_only_from_the_node_its_workload_runs_on() -> None:
    h, _, out = _handlers()
    before = {r: _refusals(r) for r in ("workload", "node", "unsigned", "mismatch")}
    forged = _msg(EXEC.name, _exec(B), node="node-a", signer="node-a")  # node-a for node-b's
    lying = _msg(EXEC.name, _exec(B), node="node-b", signer="node-a")  # ...saying it is node-b
    unsigned = _msg(EXEC.name, _exec(B), node="node-b", signer=None)
    tampered = _tampered(_msg(EXEC.name, _exec(B), node="node-b", signer="node-b"))
    good = _msg(EXEC.name, _exec(B, pid=9), node="node-b", signer="node-b")

    async def go() -> None:
        for msg in (forged, lying, unsigned, tampered, good):
            await h.on_event(msg)
    run(go())
    assert [d.pid for d in out.decisions()] == [9]
    assert len(out.letters()) == 4
    for reason, count in before.items():
        assert _refusals(reason) == count + 1, reason


def test_a_node_cannot_announce_another_nodes_workload_nor_take_one_over() -> None:
    h, agents, _ = _handlers()
    foreign = Workload(id="c-new", kind=WorkloadKind.CONTAINER, node="node-b", name="x",
                       namespace="demo", service="x", image="busybox")
    moved = Workload(id=B.id, kind=WorkloadKind.CONTAINER, node="node-a", name="db",
                     namespace="demo", service="db", image="busybox")

    async def go() -> None:
        await h.on_workload_announcement(_msg(WORKLOADS.name, foreign, node="node-a",
                                              signer="node-a", key=foreign.id))
        await h.on_workload_announcement(_msg(WORKLOADS.name, moved, node="node-a",
                                              signer="node-a", key=moved.id))
        await h.on_workload_announcement(_msg(WORKLOADS.name, A, node="node-a",
                                              signer="node-a", key=A.id))
    run(go())
    letters = agents.letters()
    assert len(letters) == 2 and "announced workload" in letters[0].error
    assert "cannot take it over" in letters[1].error
    # the legitimate one went on to the group's writer
    assert [e.payload.id for e in agents.on(POLICY_UPDATES.name)  # type: ignore[union-attr]
            if isinstance(e.payload, Workload)] == [A.id]


def test_only_the_stream_app_writes_policy_updates() -> None:
    h, agents, _ = _handlers()
    edit = ServiceConfig(services=("web.demo",), profile_mode="Protect")

    async def go() -> None:  # (the announcement, as the stream app passes it on: the group)
        await h.on_update(_msg(POLICY_UPDATES.name, A, node="node-a", signer="streams"))
        await h.on_update(_msg(POLICY_UPDATES.name, edit, node="node-a", signer="node-a"))
        await h.on_update(_msg(POLICY_UPDATES.name, edit, node="streams", signer=None))
        await h.on_update(_msg(POLICY_UPDATES.name, edit, node="streams", signer="streams"))
    run(go())
    assert len(agents.letters()) == 2
    written = [e.payload for e in agents.on(POLICY.name) if isinstance(e.payload, GroupPolicy)]
    modes = [p.mode.value for p in written if p.name == "nv.web.demo" and p.mode is not None]
    assert modes == ["Discover", "Protect"]  # made from the announcement, then the one edit


def test_the_mirror_believes_policy_and_process_state_only_from_the_stream_app() -> None:
    h, _, _ = _handlers()
    mirror = PolicyMirror(KAFKA, on_policy=h.on_policy, on_workload=h.on_workload,
                          on_process_state=h.on_process_state,
                          dead_letter=h.dead_letter_entry, provenance=Provenance(RING),
                          known_workload=h.session.workloads.get)
    snap = ProcessSnapshot(workload_id=B.id, seq=99)

    async def go() -> None:
        for signer in ("node-b", None):
            m = _msg(PROCESS_STATE.name, snap, node="x", signer=signer, key=B.id)
            await mirror.apply(m.topic, 0, m.offset, m.key, m.value, m.headers)
        # node-a cannot tombstone node-b's workload either
        tomb_headers = Signer.for_node(RING.node_keys("node-a")).headers(
            WORKLOADS.name, B.id.encode(), None)
        await mirror.apply(WORKLOADS.name, 0, 5, B.id.encode(), None, tomb_headers)
        m = _msg(PROCESS_STATE.name, snap, node="streams", signer="streams", key=B.id)
        await mirror.apply(m.topic, 0, m.offset, m.key, m.value, m.headers)
    run(go())
    assert mirror.invalid == 3
    assert B.id in h.session.workloads
    assert h.session.states[B.id].seq == 99


def test_verdicts_are_signed_for_their_node_with_an_expiry_and_the_rest_as_the_stream_app(
        ) -> None:
    now = 1_800_000_000.0
    sign = RecordSigner(RING, VERDICTS.name, 60, clock=lambda: now)
    verdict = encode(Envelope.wrap(_exec(A), event_id="v", node="streams", ts=now))
    headers = sign(VERDICTS.name, b"node-a", verdict)
    signed = Verifier.for_node(RING.node_keys("node-a")).verify(
        VERDICTS.name, b"node-a", verdict, headers, now=now)
    assert signed.expires == int(now + 60) + 1
    # node-b cannot use node-a's verdict, and it expires
    for keys, at in ((RING.node_keys("node-b"), now), (RING.node_keys("node-a"), now + 120)):
        with pytest.raises(BadSignature):
            Verifier.for_node(keys).verify(VERDICTS.name, b"node-a", verdict, headers, now=at)
    policy = sign(POLICY.name, b"g", b"{}")
    assert Verifier.for_streams(RING).verify(POLICY.name, b"g", b"{}", policy, now=now,
                                             from_streams=True).signer == "streams"


def test_accept_unsigned_believes_unsigned_records_but_still_checks_signed_ones() -> None:
    agents, out = FakePublisher(), FakePublisher()
    h = Handlers(session=DecisionSession(), publisher=agents, decisions=out, kafka=KAFKA,
                 provenance=Provenance(RING, accept_unsigned=True))
    h.ready.set()
    h.on_workload(Envelope.wrap(B, event_id="wl", node="node-b", ts=1.0), B.id)
    bad = _tampered(_msg(EXEC.name, _exec(B), node="node-b", signer="node-b"))

    async def go() -> None:
        await h.on_event(_msg(EXEC.name, _exec(B, pid=3), node="node-b", signer=None))
        await h.on_event(bad)
        # unsigned, but claiming a node its workload is not on: still refused
        await h.on_event(_msg(EXEC.name, _exec(B, pid=4), node="node-a", signer=None))
    run(go())
    assert [d.pid for d in out.decisions()] == [3]
    assert len(out.letters()) == 2
