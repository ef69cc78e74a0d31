"""Benchmark: rows/s from Kafka into ClickHouse through the sink, against a baseline.

N verdicts (default 500,000) are produced to a private verdicts topic. Baseline, same run:
clickhouse-driver columnar INSERTs of the same rows straight from memory (rows built before the
clock starts, 100,000 per INSERT). Also the floor of the design, from its parts measured in the
same run: consuming alone, parsing alone and the baseline INSERT, added up per row. Then the
sink (`ClickHouseWriter`, decode + rows + insert + commit) stores them from Kafka into another
database. Targets (issue 6): >= 100,000 rows/s and
>= 60% of the baseline. Needs the local stack (`procwarden stack up`).

    python bench/sink.py [--rows N]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from confluent_kafka import Consumer, Producer

from procwarden.runtime import tune_gc
from procwarden.stack.topics import delete_prefixed_topics, ensure_topics
from schemas import Decision, Envelope, EventKind, Mode, Verdict, encode
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import VERDICTS
from sinks.clickhouse.migrations import apply_migrations, connect
from sinks.clickhouse.rows import TABLES
from sinks.clickhouse.writer import ClickHouseWriter


def envelopes(n: int) -> list[Envelope]:
    out = []
    for i in range(n):
        d = Decision(event_id=f"ev-{i}", event_kind=EventKind.EXEC, workload_id=f"c{i % 500}",
                     node=f"node-{i % 50}", verdict=Verdict.BLOCK if i % 50 == 0 else
                     Verdict.ALLOW, reason="rule", group=f"nv.svc{i % 20}.prod",
                     rule_uuid="4d66739d-563e-528f-b106-fa0239e0e2a1", rule_group="nv.svc.prod",
                     mode=Mode.PROTECT, pid=1000 + i % 30000, start_time=123456 + i,
                     name=f"tool{i % 50}", path=f"/usr/bin/tool{i % 50}", user="app",
                     ts=1_700_000_000.0 + i / 1000, policy_version=7)
        out.append(Envelope.wrap(d, event_id=f"v-{i}", node="streams", ts=d.ts))
    return out


def baseline(envs: list[Envelope], db: str) -> float:
    table = TABLES[Decision]
    rows = [table.row(e) for e in envs]
    client = connect(ClickHouseConnection())
    apply_migrations(client, db)
    cols = ", ".join(table.columns)
    chunks = [[list(c) for c in zip(*rows[i:i + 100_000], strict=True)]
              for i in range(0, len(rows), 100_000)]
    started = time.perf_counter()
    for data in chunks:
        client.execute(f"INSERT INTO {db}.events ({cols}) VALUES", data, columnar=True)
    elapsed = time.perf_counter() - started
    client.disconnect()
    return len(rows) / elapsed


def consume_only(kafka: KafkaConnection, n: int) -> float:
    """Messages/s a confluent-kafka consumer hands over (each value taken), doing nothing else."""
    consumer = Consumer({**kafka.confluent_config(), "group.id": f"floor-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 64 << 20})
    consumer.subscribe([kafka.topic(VERDICTS.name)])
    got, started = 0, 0.0
    while got < n:
        msgs = consumer.consume(10_000, 1.0)
        if msgs and not started:
            started = time.perf_counter()
        for msg in msgs:
            msg.value()
        got += len(msgs)
    elapsed = time.perf_counter() - started
    consumer.close()
    return got / elapsed


def parse_only(values: list[bytes]) -> float:
    """Messages/s orjson parses, building nothing and checking nothing."""
    started = time.perf_counter()
    for value in values:
        orjson.loads(value)
    return len(values) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    kafka = KafkaConnection(topic_prefix=f"sinkbench{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka, [VERDICTS])
    envs = envelopes(args.rows)
    producer = Producer({**kafka.confluent_config(), "linger.ms": 20,
                         "compression.type": "lz4", "batch.size": 1 << 20})
    for i, env in enumerate(envs):
        producer.produce(kafka.topic(VERDICTS.name), key=env.node.encode(), value=encode(env))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    values = [encode(env) for env in envs]
    base_db = f"bench_base_{uuid.uuid4().hex[:8]}"
    sink_db = f"bench_sink_{uuid.uuid4().hex[:8]}"
    print(f"sink benchmark: {args.rows:,} verdict rows (25 columns)")
    base = baseline(envs, base_db)
    print(f"baseline  columnar INSERT from memory: {base:>10,.0f} rows/s")

    tune_gc()  # as `procwarden sink-clickhouse` does
    # The floor of this design (confluent-kafka, JSON, columnar clickhouse-driver, one
    # process): taking each message, parsing it and inserting it, with no validation, no rows
    # built, no commits. No sink of this design runs faster on this machine.
    consumed, parsed = consume_only(kafka, args.rows), parse_only(values)
    floor = 1 / (1 / consumed + 1 / parsed + 1 / base)
    print(f"consume only (confluent-kafka):          {consumed:>10,.0f} msgs/s")
    print(f"parse only (orjson.loads):               {parsed:>10,.0f} msgs/s")
    print(f"floor     consume + parse + INSERT:      {floor:>10,.0f} rows/s "
          f"({floor / base:.0%} of the baseline)")

    writer = ClickHouseWriter(kafka, ClickHouseConnection(database=sink_db),
                              group_id=f"bench-{uuid.uuid4().hex[:6]}", topics=(VERDICTS,),
                              batch_size=100_000, batch_seconds=1.0)
    apply_migrations(connect(ClickHouseConnection()), sink_db)
    done = threading.Event()
    started = time.perf_counter()
    thread = threading.Thread(target=writer.run,
                              args=(lambda: done.is_set() or writer.stored >= args.rows,))
    thread.start()
    thread.join()
    elapsed = time.perf_counter() - started
    writer.close()
    rate = writer.stored / elapsed
    client = connect(ClickHouseConnection())
    stored = client.execute(f"SELECT count() FROM {sink_db}.events")[0][0]
    for db in (base_db, sink_db):
        client.execute(f"DROP DATABASE IF EXISTS {db}")
    client.disconnect()
    delete_prefixed_topics(kafka, [kafka.topic_prefix])
    print(f"sink      Kafka -> ClickHouse:          {rate:>10,.0f} rows/s "
          f"({stored:,} rows stored, {rate / base:.0%} of the baseline)")
    print(f"target: >= 100,000 rows/s -> {rate:,.0f} {'MET' if rate >= 100_000 else 'MISSED'}")
    print(f"target: >= 60% of the baseline -> {rate / base:.0%} "
          f"{'MET' if rate >= 0.6 * base else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
