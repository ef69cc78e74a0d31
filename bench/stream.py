"""Benchmark: one stream worker on the local (authenticated) Kafka, signing on beside signing off.

Each run gets topics of its own (a fresh prefix) and the same events: N simulated nodes' exec
events (default 100,000 over 20 nodes x 10 containers, groups in Protect with learned rules),
then events at a steady rate. Two kinds of run, in the same bench run, in rounds:

- signing ON: the real `procwarden streams` worker with a fresh keyring (`Keyring.save`, then
  STREAMS_SIGNING_KEYRING_FILE). Every event and workload is signed as its node signs it, every
  policy as the stream app; the worker verifies each before it believes it and signs each
  verdict for its node. The latency reader checks each verdict as that node's collector does.
- signing OFF: the same worker code, `run_worker(settings, kafka, None)` with
  STREAMS_ACCEPT_UNSIGNED=true, started by a launcher of this bench (no production setting turns
  signing off): nothing is verified or signed, and the records carry no signature headers.

Per run:
1. Throughput: the N events are produced first; then the worker starts and decides them.
   Rate = verdicts / (last verdict time - first verdict time), from the verdicts' Kafka
   timestamps, read once the worker has committed them all (a reader running meanwhile would
   take CPU from the worker).
2. Latency: events at a steady `--rate` for `--latency-seconds`; publish -> verdict received
   by a consumer (what a collector sees), p50/p99.

`--rounds R` makes R on/off pairs, the order alternating (on/off, off/on, ...), as this 2-core
machine drifts; the figure is the median of the rounds' on/off ratios. Baseline, once per
bench run on the first run's events: a plain aiokafka loop (SASL_SSL, the same identity) that
consumes the exec topic and produces each value to an output topic, doing no work.

Targets: signing on within 5% of signing off (issue 22): throughput on/off >= 0.95, latency
on/off <= 1.05; one worker >= 20,000 events/s and >= half the baseline's rate; p99 publish ->
verdict under 25 ms at 1,000 events/s (issue 4). Needs the local stack (`procwarden stack up`),
whose admin identity (a super user) it uses.

    python bench/stream.py [--events N] [--latency-seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procwarden.stack import Stack
from procwarden.stack.topics import delete_prefixed_topics, ensure_topics
from schemas import (
    Action,
    Baseline,
    Envelope,
    GroupKind,
    GroupPolicy,
    Mode,
    Rule,
    RuleSource,
    Workload,
    WorkloadKind,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import ALL_TOPICS, EXEC, POLICY, VERDICTS, WORKLOADS, TopicSpec
from transport.signing import AUTH, Header, Keyring, Signer, Verifier

ROOT = Path(__file__).resolve().parents[1]
BINARIES = [f"/usr/bin/tool{i}" for i in range(50)]
BASELINE_OUT = TopicSpec("bench.baseline-out", "workload id", EXEC.partitions)
# The worker with signing off: what `procwarden streams` runs, without a keyring.
UNSIGNED_WORKER = """
from procwarden.cli import tune_gc
from schemas.connections import KafkaConnection
from streams.app import run_worker
from streams.settings import StreamSettings

settings = StreamSettings()
assert settings.accept_unsigned, "the unsigned worker needs STREAMS_ACCEPT_UNSIGNED=true"
tune_gc()
run_worker(settings, KafkaConnection.from_env(), None)
"""


class Signing:
    """What each run's records are signed with: a node's keys for what its collector sends,
    the stream app's for policy; None signs nothing (the OFF runs)."""

    def __init__(self, ring: Keyring | None) -> None:
        self.ring = ring
        self._nodes: dict[str, Signer] = {}
        self._verifiers: dict[str, Verifier] = {}
        self._streams = Signer.for_streams(ring) if ring is not None else None

    def node(self, node: str, topic: str, key: bytes, value: bytes) -> list[Header] | None:
        if self.ring is None:
            return None
        signer = self._nodes.get(node)
        if signer is None:
            signer = self._nodes[node] = Signer.for_node(self.ring.node_keys(node))
        return signer.headers(topic, key, value)

    def streams(self, topic: str, key: bytes, value: bytes) -> list[Header] | None:
        return self._streams.headers(topic, key, value) if self._streams is not None else None

    def check_verdict(self, msg: Any) -> None:
        """As the verdict's node checks it (ON); none must be signed when OFF."""
        headers = msg.headers() or []
        if self.ring is None:
            if any(name == AUTH for name, _ in headers):
                raise SystemExit("a verdict of the unsigned worker is signed")
            return
        node = msg.key().decode()
        verifier = self._verifiers.get(node)
        if verifier is None:
            verifier = self._verifiers[node] = Verifier.for_node(self.ring.node_keys(node))
        verifier.verify(msg.topic(), msg.key(), msg.value(), headers, now=time.time())


def make_workloads(nodes: int, per_node: int) -> list[Workload]:
    return [Workload(id=f"n{n}-c{c}", kind=WorkloadKind.CONTAINER, node=f"node-{n}",
                     name=f"svc{c}", namespace="bench", service=f"svc{c}")
            for n in range(nodes) for c in range(per_node)]


def setup(kafka: KafkaConnection, workloads: list[Workload], per_node: int,
          signing: Signing) -> Producer:
    ensure_topics(kafka, [*ALL_TOPICS, BASELINE_OUT])
    producer = Producer({**kafka.confluent_config(), "enable.idempotence": True,
                         "partitioner": "murmur2_random", "linger.ms": 5,
                         "compression.type": "lz4"})
    for c in range(per_node):
        group = f"nv.svc{c}.bench"
        rules = tuple(Rule(b.rsplit("/", 1)[-1], b, Action.ALLOW, RuleSource.LEARNED,
                           f"{group}-{i}", group, users=("app",))
                      for i, b in enumerate(BINARIES))
        policy = GroupPolicy(name=group, kind=GroupKind.LEARNED, mode=Mode.PROTECT,
                             baseline=Baseline.ZERO_DRIFT, rules=rules, version=1)
        topic, key = kafka.topic(POLICY.name), group.encode()
        value = encode(Envelope.wrap(policy, event_id=f"p-{group}", node="bench",
                                     ts=time.time()))
        producer.produce(topic, key=key, value=value, headers=signing.streams(topic, key, value))
    for wl in workloads:
        topic, key = kafka.topic(WORKLOADS.name), wl.id.encode()
        value = encode(Envelope.wrap(wl, event_id=f"w-{wl.id}", node=wl.node, ts=time.time()))
        producer.produce(topic, key=key, value=value,
                         headers=signing.node(wl.node, topic, key, value))
    producer.flush(30)
    return producer


def exec_message(i: int, wl: Workload, ts: float, event_id: str = "") -> bytes:
    path = BINARIES[i % len(BINARIES)] if i % 50 else "/usr/bin/nc"  # 2% violations
    name = path.rsplit("/", 1)[-1]
    return orjson.dumps({"schema_version": 1, "event_id": event_id or f"e{i}", "node": wl.node,
                         "cluster": "bench", "ts": ts, "kind": "exec",
                         "payload": {"workload_id": wl.id, "pid": 1000 + i % 30000, "ppid": 1,
                                     "path": path, "name": name, "argv": [name],
                                     "user": "app", "euid": 1000, "ruid": 1000}})


def produce_exec(producer: Producer, kafka: KafkaConnection, signing: Signing, i: int,
                 wl: Workload, ts: float, event_id: str = "") -> None:
    topic, key = kafka.topic(EXEC.name), wl.id.encode()
    value = exec_message(i, wl, ts, event_id)
    producer.produce(topic, key=key, value=value, headers=signing.node(wl.node, topic, key, value))


def start_worker(kafka_env: dict[str, str], kafka: KafkaConnection, tmp: Path, app_id: str,
                 ring_file: Path | None) -> subprocess.Popen[bytes]:
    """The worker, signing (with `ring_file`) or not; on the admin identity, this run's topics."""
    env = {**os.environ, **kafka_env, "PROCWARDEN_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "STREAMS_APP_ID": app_id, "STREAMS_WEB_PORT": str(free_port()),
           "STREAMS_DATA_DIR": str(tmp), "STREAMS_LOG_LEVEL": "warning"}
    if ring_file is not None:
        env |= {"STREAMS_SIGNING_KEYRING_FILE": str(ring_file),
                "STREAMS_ACCEPT_UNSIGNED": "false"}
        command = ["-m", "procwarden.cli", "streams"]
    else:
        env |= {"STREAMS_ACCEPT_UNSIGNED": "true"}
        env.pop("STREAMS_SIGNING_KEYRING_FILE", None)
        command = ["-c", UNSIGNED_WORKER]
    log = open(tmp / f"worker-{app_id}.log", "wb")  # noqa: SIM115 - lives as long as the worker
    prefix = os.environ.get("BENCH_WORKER_PREFIX", "").split()  # e.g. a profiler
    # A process group of its own: stopping it stops a profiler's child too.
    return subprocess.Popen([*prefix, sys.executable, *command], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def verdict_consumer(kafka: KafkaConnection, at_end: bool) -> Consumer:
    """A reader of the verdicts from their beginning, or from their current end (assigned at
    the high watermarks, so it misses nothing produced after this returns)."""
    consumer = Consumer({**kafka.confluent_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 5})
    topic = kafka.topic(VERDICTS.name)
    partitions = []
    for p in range(VERDICTS.partitions):
        high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        partitions.append(TopicPartition(topic, p, high if at_end else 0))
    consumer.assign(partitions)
    return consumer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_verdicts(kafka: KafkaConnection, expected: int, timeout: float,
                   worker: subprocess.Popen[bytes], check: Callable[[Any], None],
                   on_message: Callable[[Any], None] | None = None,
                   consumer: Consumer | None = None) -> tuple[int, float, float]:
    """Consume verdicts until `expected` arrived, each checked as its node would; (count,
    first ts, last ts) from Kafka timestamps (the worker's produce time)."""
    if consumer is None:
        consumer = verdict_consumer(kafka, at_end=False)
    count, first, last = 0, float("inf"), 0.0
    deadline = time.monotonic() + timeout
    try:
        while count < expected and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see its log")
            # A short wait: consume() returns when its wait ends, and the latency phase
            # stamps each verdict when it is handed over.
            for msg in consumer.consume(10000, 0.001):
                if msg.error() or b'"event_kind":"exec"' not in (msg.value() or b""):
                    continue  # hold settings records are not decided events
                count += 1
                ts = msg.timestamp()[1] / 1000
                first, last = min(first, ts), max(last, ts)
                if on_message is not None:
                    on_message(msg)
                check(msg)
    finally:
        consumer.close()
    return count, first, last


def wait_until_decided(kafka: KafkaConnection, group: str, expected: int, timeout: float,
                       worker: subprocess.Popen[bytes]) -> None:
    """Wait until the worker's event consumer group has committed `expected` exec events,
    looking twice a second: a reader of the verdicts running meanwhile would take CPU from the
    worker it measures."""
    watcher = Consumer({**kafka.confluent_config(), "group.id": group})
    partitions = [TopicPartition(kafka.topic(EXEC.name), p) for p in range(EXEC.partitions)]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see its log")
            done = sum(max(0, tp.offset) for tp in watcher.committed(partitions, timeout=10))
            if done >= expected:
                return
            time.sleep(0.5)
    finally:
        watcher.close()
    raise SystemExit(f"the worker did not decide {expected:,} events in {timeout:.0f} s")


async def baseline_loop(kafka: KafkaConnection, expected: int) -> float:
    """Plain aiokafka consume -> produce over the exec topic, no work: events/s."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.kafka.kafka_options import aiokafka_options

    options = aiokafka_options(kafka)  # SASL_SSL as the worker's own aiokafka client
    consumer = AIOKafkaConsumer(kafka.topic(EXEC.name), **options,
                                group_id=f"baseline-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", enable_auto_commit=True)
    producer = AIOKafkaProducer(**options, acks="all", compression_type="lz4", linger_ms=5)
    await consumer.start()
    await producer.start()
    out = kafka.topic(BASELINE_OUT.name)
    seen, started = 0, 0.0
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for record in records:
                    if not started:
                        started = time.perf_counter()
                    await producer.send(out, record.value, key=record.key)
                    seen += 1
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return seen / (time.perf_counter() - started)


class CpuSampler(threading.Thread):
    """CPU seconds used by the worker and by the broker, sampled every 0.1 s from /proc: per
    decided event, over the throughput phase only (first to last verdict), so the start-up
    counts for neither side. On this 2-core machine the broker's extra work is the worker's
    lost CPU too."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stopped = threading.Event()

    @classmethod
    def cpu(cls, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / cls.TICK  # utime + stime, all threads

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.samples.append((time.time(), {k: self.cpu(p) for k, p in self.pids.items()}))

    def per_event(self, first: float, last: float, count: int) -> dict[str, float]:
        """Microseconds of CPU per event for each process, from the samples nearest the
        phase's ends."""
        inside = [s for s in self.samples if first <= s[0] <= last]
        if len(inside) < 2 or count < 2:
            return {}
        (t0, a), (t1, b) = inside[0], inside[-1]
        share = (count - 1) * (t1 - t0) / (last - first)  # events decided between the samples
        return {k: (b[k] - a[k]) / share * 1e6 for k in self.pids}


@dataclass(frozen=True)
class Run:
    signed: bool
    rate: float  # events/s
    p50: float  # publish -> verdict received, seconds
    p99: float
    produced_p50: float  # publish -> the worker produced the verdict
    produced_p99: float
    cpu_us: dict[str, float]  # CPU per decided event: worker, broker

    @property
    def label(self) -> str:
        return "signing ON " if self.signed else "signing OFF"


def one_run(admin: KafkaConnection, kafka_env: dict[str, str], tmp: Path,
            ring: Keyring | None, ring_file: Path | None, workloads: list[Workload],
            args: argparse.Namespace, baseline: list[float], broker_pid: int) -> Run:
    """A worker on topics of its own, the same events (signed when `ring` is given)."""
    kafka = replace(admin, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    signing = Signing(ring)
    try:
        producer = setup(kafka, workloads, args.per_node, signing)
        now = time.time()
        for i in range(args.events):
            produce_exec(producer, kafka, signing, i, workloads[i % len(workloads)], now)
            if i % 10000 == 0:
                producer.poll(0)
        producer.flush(60)
        if not baseline and not args.no_baseline:
            baseline.append(asyncio.run(baseline_loop(kafka, args.events)))
            print(f"baseline     aiokafka consume->produce (SASL_SSL), no work: "
                  f"{baseline[0]:>10,.0f} events/s", flush=True)
        return measure(kafka, kafka_env, tmp, ring_file, workloads, args, producer, signing,
                       broker_pid)
    finally:
        delete_prefixed_topics(admin, [kafka.topic_prefix])


def measure(kafka: KafkaConnection, kafka_env: dict[str, str], tmp: Path,
            ring_file: Path | None, workloads: list[Workload], args: argparse.Namespace,
            producer: Producer, signing: Signing, broker_pid: int) -> Run:
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    worker = start_worker(kafka_env, kafka, tmp, app_id, ring_file)
    sampler = CpuSampler({"worker": worker.pid, "broker": broker_pid})
    sampler.start()
    try:
        wait_until_decided(kafka, f"{app_id}-events", args.events, 600, worker)
        sampler.stopped.set()
        count, first, last = count_verdicts(kafka, args.events, 120, worker,
                                            check=signing.check_verdict)
        if count < args.events:
            raise SystemExit(f"only {count:,} of {args.events:,} verdicts")
        rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
        cpu_us = sampler.per_event(first, last, count)

        latencies: list[float] = []
        produced: list[float] = []  # event ts -> the worker produced the verdict
        sent: dict[str, float] = {}

        def on_verdict(msg: Any) -> None:
            received = time.time()
            env = orjson.loads(msg.value())
            started = sent.pop(env["payload"]["event_id"], None)
            if started is not None:
                latencies.append(received - started)
                produced.append(msg.timestamp()[1] / 1000 - started)

        total = int(args.latency_seconds * args.rate)

        def pace() -> None:
            t0 = time.time()
            for i in range(total):
                delay = t0 + i / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                event_id = f"lat{i}"
                ts = time.time()
                sent[event_id] = ts
                produce_exec(producer, kafka, signing, i, workloads[i % len(workloads)], ts,
                             event_id)
                producer.poll(0)
            producer.flush(30)

        # A fresh reader at the end of the verdicts: it sees only the paced events' verdicts.
        reader = verdict_consumer(kafka, at_end=True)
        pacer = threading.Thread(target=pace)
        pacer.start()
        count_verdicts(kafka, total, args.latency_seconds + 120, worker,
                       check=signing.check_verdict, on_message=on_verdict, consumer=reader)
        pacer.join()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    if len(latencies) < 2:
        raise SystemExit("latency: no verdicts received")
    q, qp = statistics.quantiles(latencies, n=100), statistics.quantiles(produced, n=100)
    result = Run(ring_file is not None, rate, q[49], q[98], qp[49], qp[98], cpu_us)
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in cpu_us.items()) or "not sampled"
    print(f"{result.label}  decided {count:,} events: {rate:>10,.0f} events/s (CPU us/event: "
          f"{cpu}); latency "
          f"{len(latencies):,} events at {args.rate:,}/s: p50 {q[49] * 1000:.1f} ms, "
          f"p99 {q[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms (verdict produced "
          f"by the worker: p50 {qp[49] * 1000:.1f} ms, p99 {qp[98] * 1000:.1f} ms)", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--per-node", type=int, default=10)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="on/off pairs, the order alternating; the median ratio is reported")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the aiokafka consume->produce baseline")
    args = parser.parse_args()

    stack = Stack()
    if not stack.status().kafka_ready:
        raise SystemExit("the local Kafka is not running: `procwarden stack up` first")
    admin, kafka_env = stack.kafka_connection, stack.kafka.environment()
    broker_pid = stack.kafka.process.pid()
    if broker_pid is None:
        raise SystemExit("cannot find the local Kafka's process")
    tmp = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    ring = Keyring.generate()
    ring_file = tmp / "keys" / "keyring.json"
    ring.save(ring_file)
    workloads = make_workloads(args.nodes, args.per_node)
    print(f"stream benchmark: {args.events:,} exec events from {len(workloads)} workloads on "
          f"{args.nodes} nodes, one worker, {args.rounds} round(s) of signing on and off "
          f"({admin.describe()}, a fresh topic prefix per run)", flush=True)

    baseline: list[float] = []
    pairs: list[tuple[Run, Run]] = []
    for r in range(args.rounds):
        runs: dict[bool, Run] = {}
        for signed in ((True, False) if r % 2 == 0 else (False, True)):
            runs[signed] = one_run(admin, kafka_env, tmp, ring if signed else None,
                                   ring_file if signed else None, workloads, args, baseline,
                                   broker_pid)
        pairs.append((runs[True], runs[False]))
        on, off = pairs[-1]
        print(f"round {r + 1}: on/off throughput {on.rate / off.rate:.3f}, latency p50 "
              f"{on.p50 / off.p50:.3f}, p99 {on.p99 / off.p99:.3f}", flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    rate_ratio = median([on.rate / off.rate for on, off in pairs])
    p50_ratio = median([on.p50 / off.p50 for on, off in pairs])
    p99_ratio = median([on.p99 / off.p99 for on, off in pairs])
    for signed in (True, False):
        side = [p[0] if signed else p[1] for p in pairs]
        cpu = ", ".join(f"{k} {median([x.cpu_us[k] for x in side if k in x.cpu_us]):.1f}"
                        for k in ("worker", "broker") if any(k in x.cpu_us for x in side))
        print(f"{side[0].label}  median of {len(side)}: {median([x.rate for x in side]):,.0f} "
              f"events/s, latency p50 {median([x.p50 for x in side]) * 1000:.1f} ms, "
              f"p99 {median([x.p99 for x in side]) * 1000:.1f} ms; CPU us/event: {cpu}")
    on_rate = median([on.rate for on, _ in pairs])
    on_p99 = median([on.p99 for on, _ in pairs])
    print(f"target: signing on within 5% of off, throughput on/off >= 0.95 -> median "
          f"{rate_ratio:.3f} {'MET' if rate_ratio >= 0.95 else 'MISSED'}")
    print(f"target: signing on within 5% of off, latency on/off <= 1.05 -> median p50 "
          f"{p50_ratio:.3f} {'MET' if p50_ratio <= 1.05 else 'MISSED'}, p99 {p99_ratio:.3f} "
          f"{'MET' if p99_ratio <= 1.05 else 'MISSED'}")
    print(f"target: one worker (signing on) >= 20,000 events/s -> {on_rate:,.0f}/s "
          f"{'MET' if on_rate >= 20_000 else 'MISSED'}")
    if baseline:
        print(f"target: >= half the baseline (signing on) -> {on_rate / baseline[0]:.2f} "
              f"{'MET' if on_rate >= baseline[0] / 2 else 'MISSED'}")
    print(f"target: p99 publish->verdict < 25 ms at {args.rate:,}/s (signing on) -> "
          f"{on_p99 * 1000:.1f} ms {'MET' if on_p99 < 0.025 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
