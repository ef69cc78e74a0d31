"""Benchmark: one stream worker on the local Kafka, against a do-nothing baseline.

1. Throughput: N simulated nodes' exec events (default 100,000 over 20 nodes x 10 containers,
   groups in Protect with learned rules) are produced first; then one `procwarden streams` worker
   starts and decides them. Rate = verdicts / (last verdict time - first verdict time), from the
   verdicts' Kafka timestamps, read once the worker has committed them all (a reader running
   meanwhile would take CPU from the worker). Baseline, same events, same run: a plain aiokafka
   loop that consumes the exec topic and produces each value to an output topic, doing no work.
2. Latency: events at a steady 1,000/s for `--latency-seconds`; publish -> verdict received by a
   consumer (what a collector sees), p50/p99.

Targets (issue 4): >= 20,000 events/s for one worker and >= half the baseline's rate; p99
publish -> verdict under 25 ms at 1,000 events/s. Needs the local stack (`procwarden stack up`).

    python bench/stream.py [--events N] [--latency-seconds S]
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
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

ROOT = Path(__file__).resolve().parents[1]
BINARIES = [f"/usr/bin/tool{i}" for i in range(50)]


def setup(kafka: KafkaConnection, nodes: int, per_node: int) -> tuple[Producer, list[Workload]]:
    ensure_topics(kafka, ALL_TOPICS)
    producer = Producer({**kafka.confluent_config(), "enable.idempotence": True,
                         "partitioner": "murmur2_random", "linger.ms": 5,
                         "compression.type": "lz4"})
    workloads = [Workload(id=f"n{n}-c{c}", kind=WorkloadKind.CONTAINER, node=f"node-{n}",
                          name=f"svc{c}", namespace="bench", service=f"svc{c}")
                 for n in range(nodes) for c in range(per_node)]
    for c in range(per_node):
        group = f"nv.svc{c}.bench"
        rules = tuple(Rule(b.rsplit("/", 1)[-1], b, Action.ALLOW, RuleSource.LEARNED,
                           f"{group}-{i}", group, users=("app",))
                      for i, b in enumerate(BINARIES))
        policy = GroupPolicy(name=group, kind=GroupKind.LEARNED, mode=Mode.PROTECT,
                             baseline=Baseline.ZERO_DRIFT, rules=rules, version=1)
        producer.produce(kafka.topic(POLICY.name), key=group.encode(),
                         value=encode(Envelope.wrap(policy, event_id=f"p-{group}",
                                                    node="bench", ts=time.time())))
    for wl in workloads:
        producer.produce(kafka.topic(WORKLOADS.name), key=wl.id.encode(),
                         value=encode(Envelope.wrap(wl, event_id=f"w-{wl.id}", node=wl.node,
                                                    ts=time.time())))
    producer.flush(30)
    return producer, workloads


def exec_message(i: int, wl: Workload, ts: float) -> bytes:
    path = BINARIES[i % len(BINARIES)] if i % 50 else "/usr/bin/nc"  # 2% violations
    name = path.rsplit("/", 1)[-1]
    return orjson.dumps({"schema_version": 1, "event_id": f"e{i}", "node": wl.node,
                         "cluster": "bench", "ts": ts, "kind": "exec",
                         "payload": {"workload_id": wl.id, "pid": 1000 + i % 30000, "ppid": 1,
                                     "path": path, "name": name, "argv": [name],
                                     "user": "app", "euid": 1000, "ruid": 1000}})


def start_worker(kafka: KafkaConnection, tmp: Path, app_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "PROCWARDEN_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "STREAMS_APP_ID": app_id,
           "STREAMS_WEB_PORT": str(free_port()), "STREAMS_DATA_DIR": str(tmp),
           "STREAMS_LOG_LEVEL": "warning"}
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    prefix = os.environ.get("BENCH_WORKER_PREFIX", "").split()  # e.g. a profiler
    return subprocess.Popen([*prefix, sys.executable, "-m", "procwarden.cli", "streams"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def verdict_consumer(kafka: KafkaConnection, at_end: bool) -> Consumer:
    """A reader of the verdicts from their beginning, or from their current end (assigned at
    the high watermarks, so it misses nothing produced after this returns)."""
    from confluent_kafka import TopicPartition

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
                   worker: subprocess.Popen[bytes], on_message: object = None,
                   consumer: Consumer | None = None) -> tuple[int, float, float]:
    """Consume verdicts until `expected` arrived; (count, first ts, last ts) from Kafka
    timestamps (the worker's produce time)."""
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
                if msg.error() or b'"event_kind":"exec"' not in msg.value():
                    continue  # policy verdicts (pre-exec on/off) are not decided events
                count += 1
                ts = msg.timestamp()[1] / 1000
                first, last = min(first, ts), max(last, ts)
                if on_message is not None:
                    on_message(msg)  # type: ignore[operator]
    finally:
        consumer.close()
    return count, first, last


def wait_until_decided(kafka: KafkaConnection, group: str, expected: int, timeout: float,
                       worker: subprocess.Popen[bytes]) -> None:
    """Wait until the worker's event consumer group has committed `expected` exec events,
    looking twice a second: a reader of the verdicts running meanwhile would take CPU from the
    worker it measures."""
    from confluent_kafka import TopicPartition

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

    consumer = AIOKafkaConsumer(kafka.topic(EXEC.name), bootstrap_servers=kafka.bootstrap_servers,
                                group_id=f"baseline-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all",
                                compression_type="lz4", linger_ms=5)
    await consumer.start()
    await producer.start()
    out = kafka.topic("bench.baseline-out")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--per-node", type=int, default=10)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    kafka = KafkaConnection(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka, [*ALL_TOPICS, TopicSpec("bench.baseline-out", "workload id",
                                                 EXEC.partitions)])
    producer, workloads = setup(kafka, args.nodes, args.per_node)
    now = time.time()
    for i in range(args.events):
        wl = workloads[i % len(workloads)]
        producer.produce(kafka.topic(EXEC.name), key=wl.id.encode(),
                         value=exec_message(i, wl, now))
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(60)
    print(f"stream benchmark: {args.events:,} exec events from {len(workloads)} workloads on "
          f"{args.nodes} nodes, one worker, topics {kafka.topic_prefix}*")

    baseline = asyncio.run(baseline_loop(kafka, args.events))
    print(f"baseline  aiokafka consume->produce, no work: {baseline:>10,.0f} events/s")

    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    worker = start_worker(kafka, tmp, app_id)
    try:
        wait_until_decided(kafka, f"{app_id}-events", args.events, 600, worker)
        count, first, last = count_verdicts(kafka, args.events, 120, worker)
        rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
        print(f"worker    decided {count:,} events: {rate:>10,.0f} events/s "
              f"({rate / baseline:.2f} of the baseline)")

        latencies: list[float] = []
        produced: list[float] = []  # event ts -> the worker produced the verdict
        sent: dict[str, float] = {}

        def on_verdict(msg: object) -> None:
            env = orjson.loads(msg.value())  # type: ignore[attr-defined]
            started = sent.pop(env["payload"]["event_id"], None)
            if started is not None:
                latencies.append(time.time() - started)
                produced.append(msg.timestamp()[1] / 1000 - started)  # type: ignore[attr-defined]

        total = int(args.latency_seconds * args.rate)
        import threading

        def pace() -> None:
            t0 = time.time()
            for i in range(total):
                target = t0 + i / args.rate
                delay = target - time.time()
                if delay > 0:
                    time.sleep(delay)
                wl = workloads[i % len(workloads)]
                ts = time.time()
                event_id = f"lat{i}"
                sent[event_id] = ts
                value = exec_message(i, wl, ts).replace(f'"e{i}"'.encode(),
                                                        f'"{event_id}"'.encode())
                producer.produce(kafka.topic(EXEC.name), key=wl.id.encode(), value=value)
                producer.poll(0)
            producer.flush(30)

        # A fresh reader at the end of the verdicts: it sees only the paced events' verdicts.
        reader = verdict_consumer(kafka, at_end=True)
        pacer = threading.Thread(target=pace)
        pacer.start()
        count_verdicts(kafka, total, args.latency_seconds + 120, worker,
                       on_message=on_verdict, consumer=reader)
        pacer.join()
        if latencies:
            q = statistics.quantiles(latencies, n=100)
            print(f"latency   {len(latencies):,} events at {args.rate:,}/s: "
                  f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
                  f"max {max(latencies) * 1000:.1f} ms; verdict produced by the worker: "
                  f"p50 {statistics.median(produced) * 1000:.1f} ms, p99 "
                  f"{statistics.quantiles(produced, n=100)[98] * 1000:.1f} ms")
        else:
            print("latency   no verdicts received")
            q = [float("inf")] * 99
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        delete_prefixed_topics(kafka, [kafka.topic_prefix])
    print(f"target: one worker >= 20,000 events/s -> {rate:,.0f}/s "
          f"{'MET' if rate >= 20_000 else 'MISSED'}")
    print(f"target: >= half the baseline -> {rate / baseline:.2f} "
          f"{'MET' if rate >= baseline / 2 else 'MISSED'}")
    print(f"target: p99 publish->verdict < 25 ms at {args.rate:,}/s -> {q[98] * 1000:.1f} ms "
          f"{'MET' if q[98] < 0.025 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
