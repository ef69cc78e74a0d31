"""The stream worker's per-message paths with a fake publisher: no message stops them, a
refused output is one dead letter, unknown workloads wait aside in order, and readiness says
why it is not ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client import REGISTRY

from schemas import (
    Decision,
    DlqEntry,
    Envelope,
    ExecEvent,
    FileEvent,
    FileOp,
    Incident,
    ProcessSnapshot,
    ServiceConfig,
    Workload,
    WorkloadKind,
    WorkloadState,
    decode_envelope,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import (
    DLQ,
    EXEC,
    FILE,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
)
from streams.engine import EngineSettings
from streams.kafka.decider import commit_points
from streams.kafka.event_output import KafkaOutput, OutputRefused
from streams.kafka.mirror import PolicyMirror
from streams.worker.handlers import Handlers, RawMessage, SideBuffer
from streams.worker.session import DecisionSession

KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:1")
WL = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
              namespace="demo", service="web", image="busybox")
NESTED = (b'{"schema_version":1,"event_id":"deep","node":"n","cluster":"c","ts":1,'
          b'"kind":"exec","payload":{"workload_id":"c-web-1","pid":1,"path":"/bin/ls",'
          b'"argv":' + b"[" * 1000 + b"]" * 1000 + b"}}")


class FakePublisher:
    """Keeps what is sent; refuses, as the producer would, values over `limit` bytes."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.limit = limit

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        if value is not None and len(value) > self.limit:
            raise OutputRefused(topic, len(value), KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((topic, key, value))

    def on(self, topic: str) -> list[Envelope]:
        return [decode_envelope(v) for t, _, v in self.sent if t == topic and v is not None]

    def decisions(self) -> list[Decision]:
        return [e.payload for e in self.on(VERDICTS.name) if isinstance(e.payload, Decision)]

    def letters(self) -> list[DlqEntry]:
        return [e.payload for e in self.on(DLQ.name) if isinstance(e.payload, DlqEntry)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: Any) -> tuple[Handlers, FakePublisher, FakePublisher]:
    agents, decisions = FakePublisher(), FakePublisher()
    h = Handlers(session=DecisionSession(), publisher=agents, decisions=decisions, kafka=KAFKA,
                 **kw)
    h.ready.set()
    return h, agents, decisions


_offsets = iter(range(10**9))


def raw(topic: str, payload: Any = None, *, value: bytes | None = None, key: str = "k",
        partition: int = 0, event_id: str = "") -> RawMessage:
    offset = next(_offsets)
    if value is None:
        env = Envelope.wrap(payload, event_id=event_id or f"e{offset}", node="node-1",
                            ts=time.time())
        value = encode(env)
    return RawMessage(topic, partition, offset, key.encode(), value)


def exec_msg(workload: str = WL.id, path: str = "/bin/ls", **kw: Any) -> RawMessage:
    return raw(EXEC.name, ExecEvent(workload_id=workload, pid=1, path=path,
                                    name=path.rsplit("/", 1)[-1], argv=("x",)), key=workload,
               **kw)


def announce(h: Handlers, workload: Workload = WL) -> None:
    h.on_workload(Envelope.wrap(workload, event_id=f"wl-{workload.id}", node="node-1",
                                ts=time.time()), workload.id)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- no message stops a consumer --------------------------------------------------------------


def test_a_handler_that_raises_recursion_error_is_dead_lettered_and_deciding_goes_on() -> None:
    h, _, out = make()
    announce(h)
    decide = h.session.decide
    calls = []

    def once_broken(env: Envelope) -> Decision:
        calls.append(env.event_id)
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return decide(env)

    h.session.decide = once_broken  # type: ignore[method-assign]
    bad, good = exec_msg(event_id="bad"), exec_msg(event_id="good")

    async def go() -> None:
        await h.on_event(bad)
        await h.on_event(good)
    run(go())
    assert [d.event_id for d in out.decisions()] == ["good"]
    (letter,) = out.letters()
    assert (letter.topic, letter.offset, letter.stage) == (EXEC.name, bad.offset, "streams")
    assert letter.error.startswith("handling failed: RecursionError")
    assert letter.value_length == len(bad.value or b"")


def test_a_deeply_nested_message_is_dead_lettered_by_every_handler() -> None:
    h, agents, out = make()
    announce(h)

    async def go() -> None:
        await h.on_event(raw(EXEC.name, value=NESTED))
        await h.on_workload_announcement(raw(WORKLOADS.name, value=NESTED))
        await h.on_update(raw(POLICY_UPDATES.name, value=NESTED))
        await h.on_event(exec_msg(event_id="after"))
    run(go())
    assert [d.event_id for d in out.decisions()] == ["after"]
    assert [e.topic for e in out.letters()] == [EXEC.name]
    assert [e.topic for e in agents.letters()] == [WORKLOADS.name, POLICY_UPDATES.name]
    for letter in out.letters() + agents.letters():
        assert letter.value_length == len(NESTED) and len(letter.value) <= 16 * 1024


def test_the_mirror_skips_a_poisoned_record_counts_it_and_goes_on() -> None:
    h, _, out = make()
    mirror = PolicyMirror(KAFKA, on_policy=h.on_policy, on_workload=h.on_workload,
                          on_process_state=h.on_process_state, dead_letter=h.dead_letter_entry)
    before = {t: sample("procwarden_streams_mirror_skipped_total", topic=t)
              for t in (WORKLOADS.name, POLICY.name, PROCESS_STATE.name)}
    good = encode(Envelope.wrap(WL, event_id="wl", node="node-1", ts=1.0))

    async def go() -> None:
        for offset, topic in enumerate(before):
            await mirror.apply(topic, 0, offset, b"poison", NESTED)
        # a record that decodes but is no workload, on the workloads topic
        await mirror.apply(WORKLOADS.name, 0, 9, b"x", encode(Envelope.wrap(
            ServiceConfig(services=("web.demo",)), event_id="sc", node="n", ts=1.0)))
        await mirror.apply(WORKLOADS.name, 0, 10, WL.id.encode(), good)
    run(go())
    assert WL.id in h.session.workloads
    assert mirror.invalid == 4 and mirror.applied == 1
    for topic, count in before.items():
        extra = 2 if topic == WORKLOADS.name else 1
        assert sample("procwarden_streams_mirror_skipped_total", topic=topic) == count + extra
    assert sorted(e.offset for e in out.letters()) == [0, 1, 2, 9]


def test_the_mirror_refuses_a_process_state_naming_an_unknown_risk_and_goes_on() -> None:
    # Found by bench/fuzz.py: restored as it was, it raised KeyError out of the engine at the
    # workload's next exec under a risky parent; now it is refused where it is read.
    h, _, out = make()
    announce(h)
    mirror = PolicyMirror(KAFKA, on_policy=h.on_policy, on_workload=h.on_workload,
                          on_process_state=h.on_process_state, dead_letter=h.dead_letter_entry)

    def state(seq: int, risk: str) -> bytes:
        snap = ProcessSnapshot(workload_id=WL.id, seq=seq, risk={"7": risk})
        return encode(Envelope.wrap(snap, event_id=f"s{seq}", node="node-1", ts=1.0))

    async def go() -> None:
        await mirror.apply(PROCESS_STATE.name, 0, 0, WL.id.encode(), state(1, "not-a-risk"))
        await h.on_event(raw(EXEC.name, ExecEvent(workload_id=WL.id, pid=8, ppid=7,
                                                  path="/bin/ls", name="ls"),
                             key=WL.id, event_id="child"))
        await mirror.apply(PROCESS_STATE.name, 0, 1, WL.id.encode(), state(2, "nc"))
    run(go())
    (letter,) = out.letters()
    assert (letter.topic, letter.offset) == (PROCESS_STATE.name, 0)
    assert "unknown risk" in letter.error
    assert [d.event_id for d in out.decisions()] == ["child"]
    assert mirror.invalid == 1 and h.session.states[WL.id].risk == {7: "nc"}


def test_an_overflow_incident_is_published_once_beside_its_verdict() -> None:
    # Found by the real-stack flood test: the engine raised Container.Profile.Overflow on the
    # decision, and the worker never published it, so no SOC saw a workload overflow its caps.
    agents, out = FakePublisher(), FakePublisher()
    before = sample("procwarden_streams_capped_total", cap="drift_paths")
    h = Handlers(session=DecisionSession(settings=EngineSettings(max_drift_paths=2)),
                 publisher=agents, decisions=out, kafka=KAFKA)
    h.ready.set()
    announce(h)

    async def go() -> None:
        for i in range(5):
            await h.on_event(raw(FILE.name, FileEvent(WL.id, FileOp.CREATE, f"/tmp/x{i}",
                                                      executable=True), key=WL.id))
    run(go())
    overflows = [e.payload for e in out.on(SECURITY_EVENTS.name)
                 if isinstance(e.payload, Incident)
                 and e.payload.name == "Container.Profile.Overflow"]
    assert len(overflows) == 1 and overflows[0].workload_id == WL.id
    assert sum(d.capped == "drift_paths" for d in out.decisions()) == 3
    assert sample("procwarden_streams_capped_total", cap="drift_paths") == before + 3


# -- produce failures ---------------------------------------------------------------------------


def test_an_output_kafka_refuses_dead_letters_its_input_and_the_batch_goes_on() -> None:
    h, _, out = make()
    announce(h)
    out.limit = 40_000  # the verdict of a long path is over it

    async def go() -> None:
        await h.on_event(exec_msg(path="/" + "a" * 50_000, event_id="huge"))
        await h.on_event(exec_msg(event_id="small"))
        await h.end_batch()
    run(go())
    assert [d.event_id for d in out.decisions()] == ["small"]
    (letter,) = out.letters()
    assert "OutputRefused" in letter.error and "refused" in letter.error
    assert letter.topic == EXEC.name


def test_a_process_state_kafka_refuses_is_dead_lettered_and_the_others_are_published() -> None:
    h, _, out = make()
    announce(h)
    other = Workload(id="c-2", kind=WorkloadKind.CONTAINER, node="node-1", name="api",
                     namespace="demo", service="api", image="busybox")
    announce(h, other)
    run(h.on_event(exec_msg()))
    run(h.on_event(exec_msg(workload=other.id)))
    h.session.changed_states.update({WL.id, other.id})
    sizes: dict[str, int] = {}
    real_send = out.send

    async def refuse_one(topic: str, key: bytes, value: bytes | None) -> None:
        if topic == PROCESS_STATE.name and key == WL.id.encode():
            sizes["refused"] = len(value or b"")
            raise OutputRefused(topic, 5_000_000, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        await real_send(topic, key, value)

    out.send = refuse_one  # type: ignore[method-assign]
    run(h.end_batch())
    assert [k for t, k, _ in out.sent if t == PROCESS_STATE.name] == [other.id.encode()]
    (letter,) = out.letters()
    assert (letter.topic, letter.offset, letter.key) == (PROCESS_STATE.name, -1, WL.id)
    assert h.counts["state_not_persisted"] == 1


def test_the_producer_refuses_an_oversized_output_at_once_without_a_broker() -> None:
    output = KafkaOutput(KAFKA)
    before = sample("procwarden_streams_output_refused_total", topic="t",
                    error="MSG_SIZE_TOO_LARGE")
    try:
        with pytest.raises(OutputRefused, match="2000000 bytes for t was refused"):
            run(output.send("t", b"k", b"x" * 2_000_000))
        assert sample("procwarden_streams_output_refused_total", topic="t",
                      error="MSG_SIZE_TOO_LARGE") == before + 1
        # the broker refusing one output later: kept for a dead letter, not a failure
        msg = Message(topic="verdicts", partition=3, key=b"node", value=b"v" * 100)
        output._on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), msg)
        output._on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), msg)
        assert [r[1:3] for r in output._refused] == [("verdicts", 3)]
        assert [f.code() for f in output._failures] == [KafkaError._MSG_TIMED_OUT]
    finally:
        output._producer.purge()
        output.close(0.1)


def test_a_dead_letter_of_a_refused_output_is_bounded() -> None:
    output = KafkaOutput(KAFKA)
    captured: list[bytes] = []

    class Capture:
        def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
            captured.append(value)

    real, output._producer = output._producer, Capture()  # type: ignore[assignment]
    output._dead_letter(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "verdicts", 2, b"node",
                        b"\x01" * 900_000)
    (value,) = captured
    entry = decode_envelope(value).payload
    assert isinstance(entry, DlqEntry)
    assert len(value) < 120_000 and entry.value_length == 900_000 and entry.truncated
    assert entry.offset == -1 and entry.error.startswith("output refused")
    output._producer = real
    output.close(0.1)


# -- unknown workloads wait aside -------------------------------------------------------------


def test_unknown_workload_events_wait_aside_while_the_rest_is_decided() -> None:
    h, _, out = make(unknown_workload_wait_s=3.0)
    clock = Clock()
    h.waiting.clock = clock
    announce(h)
    late = Workload(id="late", kind=WorkloadKind.CONTAINER, node="node-1", name="late",
                    namespace="demo", service="late", image="busybox")

    async def go() -> None:
        for i in range(200):
            if i % 4 == 0:
                await h.on_event(exec_msg(workload=f"ghost-{i}", event_id=f"ghost-{i}",
                                          partition=1))
            await h.on_event(exec_msg(event_id=f"real-{i}", path=f"/bin/r{i}"))
        await h.on_event(exec_msg(workload="late", event_id="late-1", partition=2))
        await h.on_event(exec_msg(workload="late", event_id="late-2", partition=2))
    started = time.monotonic()
    run(go())
    assert time.monotonic() - started < 2.0  # nothing waited inline
    assert [d.event_id for d in out.decisions()] == [f"real-{i}" for i in range(200)]
    assert len(h.waiting) == 52 and not out.letters()
    # the late workload is announced: its events are decided, in order, at the next tick
    announce(h, late)
    assert run(h.tick()) is True
    assert [d.event_id for d in out.decisions()[200:]] == ["late-1", "late-2"]
    # the others are dead-lettered once their wait is over, not before
    clock.now += 2.9
    assert run(h.tick()) is False and not out.letters()
    clock.now += 0.2
    assert run(h.tick()) is True
    letters = out.letters()
    assert len(letters) == 50 and len(h.waiting) == 0
    assert all(e.error == f"invalid message: unknown workload 'ghost-{i * 4}': not announced "
               "within 3 s" for i, e in enumerate(letters))


def test_a_workloads_later_event_waits_behind_its_earlier_ones() -> None:
    h, _, out = make()

    async def go() -> None:
        await h.on_event(exec_msg(event_id="first", path="/bin/a"))
        announce(h)  # announced now, before the tick that would release "first"
        await h.on_event(exec_msg(event_id="second", path="/bin/b"))
    run(go())
    assert [d.event_id for d in out.decisions()] == ["first", "second"]
    assert len(h.waiting) == 0


def test_the_side_buffer_is_bounded_per_workload_and_in_all() -> None:
    h, _, out = make(unknown_workload_max_events=5, unknown_workload_max_per_workload=2)
    before = sample("procwarden_streams_unknown_workload_events_total", outcome="full")

    async def go() -> None:
        for i in range(3):
            await h.on_event(exec_msg(workload="g1", event_id=f"g1-{i}"))
        for n in range(2, 6):
            await h.on_event(exec_msg(workload=f"g{n}", event_id=f"g{n}"))
    run(go())
    assert len(h.waiting) == 5
    assert [e.error for e in out.letters()] == [
        "invalid message: unknown workload 'g1': no room to wait for its announcement "
        "(2 events of this workload already wait)",
        "invalid message: unknown workload 'g5': no room to wait for its announcement "
        "(5 events of unannounced workloads already wait)"]
    assert sample("procwarden_streams_unknown_workload_events_total",
                  outcome="full") == before + 2


def test_the_side_buffer_tells_the_oldest_waiting_offset_of_each_partition() -> None:
    buf = SideBuffer(wait_s=1.0, max_events=10, max_per_workload=10, clock=Clock())
    env = decode_envelope(exec_msg().value or b"")

    def park(workload: str, partition: int, offset: int) -> None:
        assert buf.park(workload, RawMessage("exec", partition, offset, None, b""), env) == ""

    park("a", 0, 5)
    park("b", 0, 7)
    park("a", 0, 9)
    park("c", 1, 3)
    assert buf.floors() == {("exec", 0): 5, ("exec", 1): 3}
    assert [i.msg.offset for i in buf.take("a")] == [5, 9]
    assert buf.floors() == {("exec", 0): 7, ("exec", 1): 3}
    assert buf.drop_partitions({("exec", 1)}) == 1
    assert buf.floors() == {("exec", 0): 7} and len(buf) == 1


def test_commits_stop_at_the_oldest_waiting_event_and_only_move_on() -> None:
    points: dict[tuple[str, int], int] = {}
    taken = {("exec", 0): 100, ("exec", 1): 50}
    assert commit_points(taken, {("exec", 0): 40}, points) == {("exec", 0): 40,
                                                               ("exec", 1): 50}
    assert commit_points(taken, {("exec", 0): 40}, points) == {}  # nothing moved
    taken[("exec", 1)] = 60
    assert commit_points(taken, {("exec", 0): 40}, points) == {("exec", 1): 60}
    assert commit_points(taken, {}, points) == {("exec", 0): 100}  # decided: moves on


def test_a_workload_announced_through_the_agent_releases_its_waiting_events() -> None:
    h, _, out = make()
    run(h.on_event(exec_msg(event_id="early")))
    env = Envelope.wrap(WL, event_id="wl", node="node-1", ts=time.time())

    async def go() -> None:
        await h.on_workload_announcement(raw(WORKLOADS.name, value=encode(env), key=WL.id))
        # the policy writer applies the announcement (the mirror may be later)
        await h.on_update(raw(POLICY_UPDATES.name, value=encode(env), key="nv.web.demo"))
        await h.tick()
    run(go())
    assert [d.event_id for d in out.decisions()] == ["early"]


def test_a_workload_stopped_before_its_waiting_events_are_released() -> None:
    h, _, out = make()
    run(h.on_event(exec_msg(event_id="early")))
    announce(h)
    stopped = Workload(id=WL.id, kind=WL.kind, node=WL.node, name=WL.name,
                       namespace=WL.namespace, service=WL.service, image=WL.image,
                       state=WorkloadState.STOPPED)
    announce(h, stopped)
    run(h.tick())
    (letter,) = out.letters()
    assert "stopped before its waiting events were decided" in letter.error


# -- readiness --------------------------------------------------------------------------------


class FakeDecider:
    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self.running = False
        self.beat = 0.0


class FakeMirror:
    def __init__(self) -> None:
        self.task: Any = None


def test_readiness_says_why_the_worker_does_not_decide() -> None:
    from streams.app import Readiness
    from transport import Health

    h, _, _ = make()
    h.ready.clear()
    decider, mirror = FakeDecider(), FakeMirror()
    health = Health("unit-streams")
    r = Readiness(h, mirror, decider, health, stall_s=30.0)  # type: ignore[arg-type]
    assert r.update() == (False, "restoring policies: the policy mirror has not caught up")
    h.ready.set()
    assert r.update() == (False, "the decider's loop is not running")
    decider.running, decider.beat = True, time.monotonic()
    assert r.update() == (True, "")
    assert sample("procwarden_ready", role="unit-streams") == 1.0
    decider.beat -= 31
    assert r.update()[1].startswith("the decider's loop has not turned for 3")
    decider.beat = time.monotonic()

    async def died() -> None:
        raise ConnectionError("gone")

    async def check_mirror() -> tuple[bool, str]:
        mirror.task = asyncio.ensure_future(died())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return r.update()
    assert run(check_mirror()) == (False, "the policy mirror stopped")
    mirror.task = None
    decider.failure = RuntimeError("boom")
    assert r.update() == (False, "the decider's loop stopped: RuntimeError: boom")
    assert sample("procwarden_ready", role="unit-streams") == 0.0
