"""Hand-written verdicts against the real collector (issue 22): real Kafka, the real
`procwarden collector`, a real host `sleep` it saw exec. Whoever can produce to the verdicts
topic must not get that sleep killed: an unsigned verdict, one signed with another keyring, one
signed properly but with `start_time` 0, naming another workload, expired, or replayed, each is
refused and counted (`procwarden_collector_verdicts_refused_total{reason}`), and the sleep lives.
A verdict signed by the stream app's keys for an event the collector published is carried out
(so the refusals are not the collector refusing everything).

No stream worker: the verdicts are the test's own, signed (or not) with the keyring the
collector's keys come from (`PROCWARDEN_KEYS_DIR`).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procwarden.keys import KEYS_DIR_ENV
from schemas import Decision, Envelope, EventKind, ExecEvent, Verdict, encode
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, VERDICTS, verdict_partition
from tests.integration.streamkit import Pipeline, free_port, running_collector
from transport.signing import Keyring, Signer

NODE = "node-verdict-abuse"
REFUSED = "procwarden_collector_verdicts_refused_total"


@dataclass
class Node:
    pipe: Pipeline
    ring: Keyring
    log: Path
    metrics_port: int

    def refused(self, reason: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == REFUSED and s.labels.get("reason") == reason:
                    return s.value
        return 0.0


@pytest.fixture(scope="module")
def node(kafka: KafkaConnection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("verdict-abuse")
    keys = tmp / "keys"
    ring = Keyring.generate()
    ring.save(keys / "keyring.json")
    pipe = Pipeline(kafka, tmp)
    port = free_port()
    with running_collector(pipe, NODE, tmp, **{KEYS_DIR_ENV: str(keys),
                                               "COLLECTOR_METRICS_PORT": str(port)}) as log:
        n = Node(pipe, ring, log, port)
        # The reader's start position is resolved at its first fetch: until a record it reads
        # is counted, a verdict sent now could fall before it and never be read at all.
        deadline = time.monotonic() + 30
        # The probe: a well-formed, unsigned allow verdict for this node (a record the
        # reader cannot decode goes to the DLQ before any signature is looked at).
        probe = Decision(event_id=f"{NODE}:probe", event_kind=EventKind.EXEC,
                         workload_id="probe", node=NODE, verdict=Verdict.ALLOW, reason="probe",
                         pid=0, start_time=0, name="probe", path="/probe")
        while n.refused("unsigned") < 1:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            _send(n, probe, ring=None)
            time.sleep(1)
        yield n


@dataclass
class Sleep:
    proc: subprocess.Popen[bytes]
    event: Envelope  # the collector's exec event for it

    @property
    def exec(self) -> ExecEvent:
        assert isinstance(self.event.payload, ExecEvent)
        return self.event.payload

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def sleep(node: Node) -> Iterator[Sleep]:
    """An unrelated host process, as the collector published its exec."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        env, _ = node.pipe.wait_for(
            EXEC.name, lambda e: isinstance(e.payload, ExecEvent) and e.payload.pid == proc.pid
            and e.node == NODE, timeout=30)
        yield Sleep(proc, env)
    finally:
        proc.kill()
        proc.wait(10)


def _block(s: Sleep, **changes: object) -> Decision:
    fields: dict[str, object] = dict(
        event_id=s.event.event_id, event_kind=EventKind.EXEC, workload_id=s.exec.workload_id,
        node=NODE, verdict=Verdict.BLOCK, reason="violation:R0", pid=s.exec.pid,
        start_time=s.exec.start_time, name="sleep", path=s.exec.path)
    fields.update(changes)
    return Decision(**fields)  # type: ignore[arg-type]


Headers = list[tuple[str, str | bytes | None]]


def _send(n: Node, d: Decision, *, ring: Keyring | None, expires_in: float = 60.0
          ) -> tuple[bytes, Headers]:
    topic = n.pipe.topic(VERDICTS.name)
    value = encode(Envelope.wrap(d, event_id=f"v-{time.time_ns()}", node=NODE, ts=time.time(),
                                 cluster="test"))
    key = NODE.encode()
    headers: Headers = [] if ring is None else list(Signer.for_streams(ring).headers(
        topic, key, value, to_node=NODE, expires=int(time.time() + expires_in)))
    _produce(n, value, headers)
    return value, headers


def _produce(n: Node, value: bytes, headers: Headers) -> None:
    n.pipe.producer.produce(n.pipe.topic(VERDICTS.name), key=NODE.encode(), value=value,
                            partition=verdict_partition(NODE, VERDICTS.partitions),
                            headers=headers)
    assert n.pipe.producer.flush(30) == 0


def _wait_refused(n: Node, reason: str, before: float, s: Sleep) -> None:
    deadline = time.monotonic() + 20
    while n.refused(reason) < before + 1:
        assert s.alive(), f"the sleep was killed (a verdict refused for {reason} was acted on)"
        assert time.monotonic() < deadline, (
            f"not refused for {reason}:\n{n.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    time.sleep(0.5)  # and it is not carried out a moment later either
    assert s.alive()


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "start-time-0", "foreign-workload",
                                  "made-up-event", "expired"])
def test_a_hand_written_verdict_leaves_the_sleep_alive(node: Node, sleep: Sleep, case: str
                                                       ) -> None:
    n, s = node, sleep
    reason, ring, d, expires_in = {
        "unsigned": ("unsigned", None, _block(s), 60.0),
        "wrong-key": ("mismatch", Keyring.generate(), _block(s), 60.0),
        "start-time-0": ("start_time_zero", n.ring, _block(s, start_time=0), 60.0),
        # a container of no one's: the pid is the host's, and the event was not for it
        "foreign-workload": ("event_mismatch", n.ring, _block(s, workload_id="c0ffee"), 60.0),
        "made-up-event": ("unknown_event", n.ring, _block(s, event_id=f"{NODE}:1:1"), 60.0),
        "expired": ("expired", n.ring, _block(s), -5.0),
    }[case]
    before = n.refused(reason)
    _send(n, d, ring=ring, expires_in=expires_in)
    _wait_refused(n, reason, before, s)


def test_a_signed_verdict_is_carried_out_once_and_its_replay_refused(node: Node, sleep: Sleep
                                                                     ) -> None:
    n, s = node, sleep
    value, headers = _send(n, _block(s), ring=n.ring)
    try:
        s.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a verdict signed by the stream app's keys was not carried out:\n"
                    f"{n.log.read_text(errors='replace')[-3000:]}")
    before = n.refused("replayed")
    _produce(n, value, headers)  # the same record again, signature and all
    deadline = time.monotonic() + 20
    while n.refused("replayed") < before + 1:
        assert time.monotonic() < deadline, n.log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
