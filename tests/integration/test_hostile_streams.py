"""The stream worker against hostile input on the real Kafka: no message stops it, no workload
stalls it, and its readiness says whether it decides.

Each test performs one attack of issue 21 and asserts that the cluster keeps deciding."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from procwarden.keys import local_keyring
from schemas import (
    Decision,
    DlqEntry,
    Envelope,
    ExecEvent,
    GroupPolicy,
    Mode,
    ServiceConfig,
    Verdict,
    Workload,
    WorkloadKind,
    decode_envelope,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import DLQ, EXEC, POLICY, POLICY_UPDATES, PROCESS_STATE, VERDICTS, WORKLOADS
from tests.integration.streamkit import NODE, ROOT, Pipeline
from transport.signing import Signer

WEB = "nv.web.demo"
WORKLOAD = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node=NODE, name="web",
                    namespace="demo", service="web", image="busybox:1.36")


@pytest.fixture
def pipeline(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka, tmp_path)
    yield p
    p.stop_workers()


def exec_event(path: str, pid: int, workload: str = WORKLOAD.id,
               argv: tuple[str, ...] | None = None) -> ExecEvent:
    name = path.rsplit("/", 1)[-1]
    return ExecEvent(workload_id=workload, pid=pid, path=path, name=name,
                     argv=argv or (name,), user="root")


def nested(depth: int = 1000) -> bytes:
    """An envelope whose payload nests `depth` levels: 2 KB that msgspec cannot decode without
    recursing past Python's limit."""
    return (b'{"schema_version":1,"event_id":"deep","node":"n","cluster":"c","ts":1,'
            b'"kind":"exec","payload":{"workload_id":"c-web-1","pid":1,"path":"/bin/ls",'
            b'"argv":' + b"[" * depth + b"]" * depth + b"}}")


def policy_where(p: Pipeline, group: str, test: Callable[[GroupPolicy], bool]) -> GroupPolicy:
    env, _ = p.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                        and e.payload.name == group and test(e.payload))
    assert isinstance(env.payload, GroupPolicy)
    return env.payload


def get(p: Pipeline, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{p.web_port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(p: Pipeline, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, from the worker's /metrics."""
    total = 0.0
    for line in get(p, "/metrics")[1].decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def decided(p: Pipeline, event_ids: set[str], timeout: float) -> dict[str, tuple[Decision, float]]:
    """The decisions of `event_ids` with when each was seen, until all are or `timeout`."""
    found: dict[str, tuple[Decision, float]] = {}
    deadline = time.monotonic() + timeout
    for msg in p.consumer(VERDICTS.name):
        if msg is not None and msg.value() is not None:
            env = decode_envelope(msg.value())
            if isinstance(env.payload, Decision) and env.payload.event_id in event_ids:
                found[env.payload.event_id] = (env.payload, time.monotonic())
        if len(found) == len(event_ids) or time.monotonic() > deadline:
            return found
    return found


def dead_letters(p: Pipeline, settle: float = 2.0) -> list[DlqEntry]:
    return [e.payload for e in p.read_all(DLQ.name, settle=settle)
            if isinstance(e.payload, DlqEntry)]


def alive(p: Pipeline) -> None:
    for proc in p.workers:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{p.logs()}"


def test_deeply_nested_messages_on_every_topic_are_dead_lettered_and_deciding_goes_on(
        pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    first = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 10))
    assert decided(p, {first.event_id}, 30)
    # The decider, both agents and the mirror each get one.
    for topic in (EXEC.name, WORKLOADS.name, POLICY_UPDATES.name, POLICY.name,
                  PROCESS_STATE.name):
        p.send_raw(topic, WORKLOAD.id, nested())
    after = [p.send(EXEC.name, WORKLOAD.id, exec_event(f"/bin/t{i}", 20 + i)).event_id
             for i in range(3)]
    assert len(decided(p, set(after), 30)) == 3, p.logs()
    alive(p)
    letters = [e for e in dead_letters(p) if e.value_length == len(nested())]
    topics = {e.topic for e in letters}
    assert {p.topic(EXEC.name), p.topic(POLICY_UPDATES.name)} <= topics, letters
    assert all(e.value_sha256 and e.stage == "streams" for e in letters)
    # The worker still takes policy edits after its agents met the message.
    p.send(POLICY_UPDATES.name, WEB, ServiceConfig(services=("web.demo",),
                                                   profile_mode="Monitor"))
    # The edit and the next exec travel on different topics: an exec may be decided before
    # the edit is applied (still in Discover), so execs are sent until one meets Monitor.
    deadline = time.monotonic() + 30
    while True:
        late = p.send(EXEC.name, WORKLOAD.id, exec_event("/usr/bin/nc", 40))
        (d, _), = decided(p, {late.event_id}, 30).values()
        if d.mode is Mode.MONITOR or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (d.mode, d.verdict, d.would_block) == (Mode.MONITOR, Verdict.ALERT, True)
    alive(p)


def test_a_poisoned_compacted_record_does_not_keep_a_new_worker_from_deciding(
        pipeline: Pipeline) -> None:
    p = pipeline
    # Records every worker replays at start, there before any worker is.
    for topic in (WORKLOADS.name, POLICY.name, PROCESS_STATE.name):
        p.send_raw(topic, "poison", nested())
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    p.start_worker()
    event = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 10))
    assert decided(p, {event.event_id}, 30), p.logs()
    status, body = get(p, "/ready")
    assert status == 200 and orjson.loads(body)["ready"] is True, body
    assert metric(p, "procwarden_streams_mirror_skipped_total") >= 3
    assert metric(p, "procwarden_ready", role="streams") == 1.0
    alive(p)


def test_an_output_over_the_producers_limit_is_dead_lettered_and_the_worker_goes_on(
        pipeline: Pipeline) -> None:
    p = pipeline
    # A codec that takes the 3 MB event: what must hold is the output side.
    p.start_worker(PROCWARDEN_MAX_MESSAGE_BYTES=str(16 << 20))
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    policy_where(p, WEB, lambda g: True)  # its learned group exists
    p.send(POLICY_UPDATES.name, WEB, ServiceConfig(services=("web.demo",),
                                                   profile_mode="Monitor"))
    policy_where(p, WEB, lambda g: g.mode.value == "Monitor")
    probe = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/probe", 5))
    assert decided(p, {probe.event_id}, 30)[probe.event_id][0].verdict is Verdict.ALERT
    # 3 MB of command line: lz4 makes it a few KB for the broker, but its incident (in the
    # verdict and on its own) is over the producer's 1 MB.
    big = Envelope.wrap(exec_event("/bin/evil", 66, argv=("sh", "A" * (3 << 20))),
                        event_id=f"{p.prefix}big", node=NODE, ts=time.time(), cluster="test")
    producer = Producer({**p.kafka.confluent_config(), "message.max.bytes": 32 << 20,
                         "compression.type": "lz4", "partitioner": "murmur2_random"})
    value = encode(big)
    headers = Signer.for_node(local_keyring().node_keys(NODE)).headers(
        p.topic(EXEC.name), WORKLOAD.id.encode(), value)  # as node-1's collector signs it
    for _ in range(2):  # twice: a worker that crash-loops would meet it at every start
        producer.produce(p.topic(EXEC.name), key=WORKLOAD.id.encode(), value=value,
                         headers=headers)
    assert producer.flush(30) == 0
    after = [p.send(EXEC.name, WORKLOAD.id, exec_event(f"/bin/after{i}", 70 + i)).event_id
             for i in range(5)]
    found = decided(p, set(after), 60)
    assert len(found) == 5, p.logs()
    assert all(d.verdict is Verdict.ALERT for d, _ in found.values())
    time.sleep(1.0)
    alive(p)
    letters = [e for e in dead_letters(p) if big.event_id in e.value]
    assert letters, "the oversized output was neither published nor dead-lettered"
    assert all(len(e.value.encode()) <= 16 * 1024 for e in letters)
    assert metric(p, "procwarden_streams_output_refused_total") >= 1


def test_unknown_workload_events_wait_aside_while_the_rest_is_decided(
        pipeline: Pipeline) -> None:
    p = pipeline
    wait_s = 12.0
    p.start_worker(STREAMS_UNKNOWN_WORKLOAD_WAIT_S=str(wait_s))
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    warm = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/warm", 1))
    assert decided(p, {warm.event_id}, 30)
    late = Workload(id="c-late-1", kind=WorkloadKind.CONTAINER, node=NODE, name="late",
                    namespace="demo", service="late", image="busybox:1.36")
    started = time.monotonic()
    real: list[str] = []
    bogus: list[str] = []
    late_event = p.send(EXEC.name, late.id, exec_event("/bin/late", 2, workload=late.id))
    for i in range(200):
        if i % 4 == 0:  # 50 events of workloads nobody announces, among the real ones
            ghost = f"ghost-{i}"
            bogus.append(p.send(EXEC.name, ghost, exec_event("/bin/x", 3, workload=ghost))
                         .event_id)
        real.append(p.send(EXEC.name, WORKLOAD.id, exec_event(f"/bin/r{i}", 100 + i)).event_id)
    found = decided(p, set(real), wait_s)
    assert len(found) == 200, f"{len(found)} of 200 decided within {wait_s} s"
    slowest = max(seen for _, seen in found.values()) - started
    assert slowest < wait_s / 2, f"the last real decision came {slowest:.1f} s after the first"
    # Its workload announced now: the event that waited is decided, not dead-lettered.
    p.send(WORKLOADS.name, late.id, late)
    (d, _), = decided(p, {late_event.event_id}, wait_s).values()
    assert d.workload_id == late.id
    # The bogus events are dead-lettered once their wait is over, not before.
    time.sleep(max(0.0, started + wait_s - time.monotonic()))
    letters = dead_letters(p, settle=4)
    # (quoted: one event id may be the prefix of another)
    ghosts = [e for e in letters if any(f'"{b}"' in e.value for b in bogus)]
    gone = {e.error for e in ghosts}
    assert len(ghosts) == 50, gone
    assert all("unknown workload" in e for e in gone), gone
    assert not [e for e in letters if f'"{late_event.event_id}"' in e.value]
    alive(p)


def test_the_worker_says_ready_only_while_it_decides(pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    deadline = time.monotonic() + 30
    while get(p, "/ready")[0] != 200:
        assert time.monotonic() < deadline, get(p, "/ready")
        time.sleep(0.2)
    body = orjson.loads(get(p, "/ready")[1])
    assert body["ready"] is True and body["role"] == "streams"
    assert metric(p, "procwarden_ready", role="streams") == 1.0


_DYING_WORKER = """
import faust

from schemas.connections import KafkaConnection
from streams.worker import handlers
from procwarden.keys import local_keyring
from streams.app import build_app
from streams.settings import StreamSettings


async def broken_end_batch(self):
    raise RuntimeError("injected: the decider's batch step fails")


handlers.Handlers.end_batch = broken_end_batch
app, _ = build_app(StreamSettings(), KafkaConnection.from_env(), local_keyring())
worker = faust.Worker(app, loglevel="INFO")
worker.spinner = None
worker.execute_from_commandline()
"""


def test_a_worker_whose_decider_loop_dies_exits_non_zero(pipeline: Pipeline,
                                                         tmp_path: Path) -> None:
    p = pipeline
    health = tmp_path / "streams.health.json"
    env = {**os.environ, "PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": p.kafka.bootstrap_servers,
           "PROCWARDEN_KAFKA_TOPIC_PREFIX": p.prefix,
           "STREAMS_APP_ID": f"streams-{p.prefix.rstrip('.')}",
           "STREAMS_WEB_PORT": str(p.web_port), "STREAMS_DATA_DIR": str(tmp_path / "streams"),
           "PROCWARDEN_HEALTH_FILE": str(health)}
    log = tmp_path / "dying.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _DYING_WORKER], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "[^Worker]: Ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
        p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 10))
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0, log.read_text()[-3000:]
    assert "injected: the decider's batch step fails" in log.read_text()
    doc = orjson.loads(health.read_text())
    assert doc["ready"] is False, doc
