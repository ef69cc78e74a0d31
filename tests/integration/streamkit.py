"""Helpers to drive a real stream worker (`procwarden streams`) over a real Kafka."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from procwarden.keys import local_keyring
from procwarden.stack.topics import ensure_topics
from schemas import DecodeError, Envelope, decode_envelope, encode
from schemas.connections import KafkaConnection
from schemas.topics import (
    ALL_TOPICS,
    DLQ,
    EXEC,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    VERDICTS,
)
from transport.signing import Signer

ROOT = Path(__file__).resolve().parents[2]
# Topic prefixes the pipelines of this test session made; the session deletes their topics at
# the end, so a developer's broker does not pile up thousands of partitions run after run.
PREFIXES: list[str] = []
NODE = "node-1"
STREAMS_WRITES = frozenset({POLICY.name, POLICY_UPDATES.name, PROCESS_STATE.name})
WORKDIR = ROOT / "var" / "testbed"  # the runc containers' image and bundles


def spawn_true(n: int) -> list[int]:
    """Run /usr/bin/true n times, one after the other, from this process; their pids."""
    pids = []
    for _ in range(n):
        pid = os.posix_spawn("/usr/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
        pids.append(pid)
    return pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Pipeline:
    """A private set of topics (a unique prefix) and the stream workers running on them."""

    base: KafkaConnection
    tmp: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    web_port: int = field(default_factory=free_port)
    seq: int = 0

    def __post_init__(self) -> None:
        if self.prefix:
            PREFIXES.append(self.prefix)
        # The base's identity and TLS, on this pipeline's own topics.
        self.kafka = replace(self.base, topic_prefix=self.prefix)
        ensure_topics(self.kafka, ALL_TOPICS)
        self.producer = Producer({**self.kafka.confluent_config(), "enable.idempotence": True,
                                  "partitioner": "murmur2_random"})

    def topic(self, name: str) -> str:
        return self.kafka.topic(name)

    # -- workers --------------------------------------------------------------------------------

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        environ = {**os.environ,
                   "PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                   "PROCWARDEN_KAFKA_TOPIC_PREFIX": self.prefix,
                   "STREAMS_APP_ID": f"streams-{self.prefix.rstrip('.')}",
                   "STREAMS_WEB_PORT": str(self.web_port),
                   "STREAMS_DATA_DIR": str(self.tmp / "streams"),
                   "STREAMS_API_TOKEN": "test-token",
                   **env}
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "procwarden.cli", "streams"],
                                    cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "[^Worker]: Ready" in text:
                self.workers.append(proc)
                return proc
            if proc.poll() is not None:
                raise AssertionError(f"the stream worker exited:\n{text[-3000:]}")
            time.sleep(0.2)
        proc.kill()
        raise AssertionError(f"the stream worker did not get ready:\n{log.read_text()[-3000:]}")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.tmp.glob("*.log"))

    # -- messages -------------------------------------------------------------------------------

    def send(self, topic: str, key: str, payload: Any, ts: float | None = None) -> Envelope:
        """Produce a record as its real writer would: signed as the stream app on the topics
        only it writes, else as the collector of node `NODE`."""
        self.seq += 1
        env = Envelope.wrap(payload, event_id=f"{self.prefix}{self.seq}", node=NODE,
                            ts=ts or time.time(), cluster="test")
        self.send_raw(topic, key, encode(env))
        return env

    def send_raw(self, topic: str, key: str, value: bytes) -> None:
        full = self.topic(topic)
        ring = local_keyring()  # the worker's: the local one
        if topic == VERDICTS.name:  # for the node it is keyed by, as the stream app signs it
            headers = Signer.for_streams(ring).headers(full, key.encode(), value, to_node=key,
                                                       expires=int(time.time()) + 60)
        else:
            signer = (Signer.for_streams(ring) if topic in STREAMS_WRITES
                      else Signer.for_node(ring.node_keys(NODE)))
            headers = signer.headers(full, key.encode(), value)
        self.producer.produce(full, key=key.encode(), value=value, headers=headers)
        assert self.producer.flush(30) == 0

    def consumer(self, topic: str, partitions: list[int] | None = None) -> Iterator[Any]:
        """Yields (message, envelope-or-None) from the start of a topic, forever."""
        consumer = Consumer({**self.kafka.confluent_config(),
                             "group.id": f"reader-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        if partitions is None:  # all of them, assigned: no group to join (a restarted
            # broker's coordinator can take a while to serve a new group)
            meta = consumer.list_topics(self.topic(topic), timeout=30).topics[self.topic(topic)]
            partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(self.topic(topic), p, 0) for p in partitions])
        try:
            while True:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    yield None
                    continue
                yield msg
        finally:
            consumer.close()

    def wait_for(self, topic: str, match: Callable[[Envelope], bool], timeout: float = 30.0,
                 partitions: list[int] | None = None) -> tuple[Envelope, Any]:
        deadline = time.monotonic() + timeout
        seen: list[Envelope] = []
        for msg in self.consumer(topic, partitions):
            if msg is not None and msg.value() is not None:
                try:
                    env: Envelope | None = decode_envelope(msg.value())
                except DecodeError:  # a hostile test's own poison: not what is waited for
                    env = None
                if env is not None and match(env):
                    return env, msg
                if env is not None:
                    seen.append(env)
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"nothing matched on {topic} within {timeout} s\n"
                             f"{self.diagnosis(seen)}\n{self.logs()}")

    def diagnosis(self, seen: list[Envelope]) -> str:
        """What a failed wait saw instead, what the DLQ holds and which execs went out: enough
        to tell a late worker from a lost or misnamed event."""
        def brief(env: Envelope) -> str:
            fields = ("workload_id", "name", "path", "pid", "verdict", "reason", "error")
            return f"{env.kind.value} " + " ".join(
                f"{f}={getattr(env.payload, f)!r}" for f in fields if hasattr(env.payload, f))
        # The host keeps exec'ing: its verdicts would crowd out the containers' ones.
        boxes = [e for e in seen if not getattr(e.payload, "workload_id", "").startswith("host:")]
        parts = [f"seen instead ({len(seen)}): " + "; ".join(brief(e) for e in seen[-15:]),
                 f"of them not from a host ({len(boxes)}): "
                 + "; ".join(brief(e) for e in boxes[-15:])]
        for name in (DLQ.name, EXEC.name):
            try:  # (the host keeps exec'ing: to the end as it is now, never "until quiet")
                found = self.read_to_end(name, timeout=20.0)
            except TimeoutError as exc:
                parts.append(str(exc))
                continue
            parts.append(f"{name} ({len(found)}): " + "; ".join(brief(e) for e in found[-15:]))
        return "\n".join(parts)

    def read_all(self, topic: str, settle: float = 2.0, timeout: float = 120.0) -> list[Envelope]:
        """Everything on a topic, after it stays quiet for `settle` seconds: what is still
        arriving is waited for. A topic that never goes quiet (a host's execs, say) is a
        TimeoutError past `timeout`, not a hang: `read_to_end` is the reader for those."""
        out: list[Envelope] = []
        start = quiet_since = time.monotonic()
        for msg in self.consumer(topic):
            now = time.monotonic()
            if msg is not None and msg.value() is not None:
                out.append(decode_envelope(msg.value()))
                quiet_since = now
            elif now - quiet_since > settle:
                return out
            if now - start > timeout:
                raise TimeoutError(f"read_all({self.topic(topic)}): still busy after {timeout} s "
                                   f"({len(out)} records, never quiet for {settle} s)")
        return out

    def read_to_end(self, topic: str, timeout: float = 60.0) -> list[Envelope]:
        """Everything on a topic up to its end offsets as they stand now (each partition's
        high watermark, taken once): unlike `read_all`, done while something keeps writing to
        it, as a host's own execs keep doing to the exec topic. TimeoutError past `timeout`
        seconds, naming the partitions short of their end."""
        name = self.topic(topic)
        consumer = Consumer({**self.kafka.confluent_config(),
                             "group.id": f"reader-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        deadline = time.monotonic() + timeout
        try:
            meta = consumer.list_topics(name, timeout=timeout).topics[name]
            ends: dict[int, int] = {}
            starts: list[TopicPartition] = []
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(name, p), timeout=max(0.1, deadline - time.monotonic()))
                if high > low:
                    ends[p] = high
                    starts.append(TopicPartition(name, p, low))
            at = {tp.partition: tp.offset for tp in starts}
            out: list[Envelope] = []
            if starts:
                consumer.assign(starts)
            while any(at[p] < end for p, end in ends.items()):
                if time.monotonic() > deadline:
                    short = ", ".join(f"partition {p} at {at[p]} of {end}"
                                      for p, end in ends.items() if at[p] < end)
                    raise TimeoutError(f"read_to_end({name}): not at its end offsets within "
                                       f"{timeout} s: {short}")
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                p, offset, value, error = msg.partition(), msg.offset(), msg.value(), msg.error()
                if p is None or offset is None or p not in ends:
                    continue
                if error is not None:
                    # Past the last record (a control record's offset included): the end as
                    # it is now, at or past the one recorded.
                    if error.code() == KafkaError._PARTITION_EOF:
                        at[p] = max(at[p], offset)
                    continue
                if offset >= ends[p]:  # written after the call: not what it reads
                    at[p] = ends[p]
                    continue
                at[p] = offset + 1
                if value is not None:
                    out.append(decode_envelope(value))
            return out
        finally:
            consumer.close()


@contextmanager
def running_collector(pipe: Pipeline, node: str, tmp_path: Path, *args: str,
                      command: Sequence[str] = (), **env: str) -> Iterator[Path]:
    """The real `procwarden collector` on this node, on the pipeline's topics; yields its log.
    It must stop cleanly (exit 0) on SIGTERM. `command`: another launcher of the same
    collector (a benchmark's), instead of `procwarden collector --node NODE ARGS`."""
    environ = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
               "COLLECTOR_STATE_DIR": str(tmp_path / f"collector-{node}"), **env}
    log_path = tmp_path / "collector.log"
    runs = 1
    while log_path.exists():  # a fresh log per run: waits must not match an earlier run's lines
        runs += 1
        log_path = tmp_path / f"collector-{runs}.log"
    with open(log_path, "ab") as log:
        argv = list(command) or [sys.executable, "-m", "procwarden.cli", "collector",
                                 "--node", node, *args]
        agent = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_line(log_path, "reading verdicts from", agent)
        yield log_path
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(30)
        text = "\n".join(line for line in log_path.read_text(errors="replace").splitlines()
                         if not line.startswith("%"))  # librdkafka's own connection noise
        assert rc == 0, f"the collector exited with {rc}:\n{text[-3000:]}"


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes] | None = None,
                  timeout: float = 30.0, after: int = 0) -> None:
    """Wait until `text` appears in a log file (past byte `after`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[after:]:
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log.name}:\n{log.read_text(errors='replace')[-3000:]}")
