"""The local stack: real Kafka and ClickHouse, started, used, restarted and checked."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from procwarden.stack import Stack, StackError, StackSettings
from procwarden.stack.kafka import quiet_logger
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import ALL_TOPICS
from sinks.clickhouse.migrations import MIGRATIONS, applied_versions, apply_migrations, connect

ROOT = Path(__file__).resolve().parents[2]


def consume_all(kafka: KafkaConnection, topic: str, expected: int,
                timeout: float = 30.0) -> list[tuple[str, str]]:
    consumer = Consumer({**kafka.confluent_config(), "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append((msg.key().decode(), msg.value().decode()))
    finally:
        consumer.close()
    return got


def produce(kafka: KafkaConnection, topic: str, items: list[tuple[str, str]]) -> None:
    producer = Producer({**kafka.confluent_config(), "enable.idempotence": True, "acks": "all"})
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def test_topics_exist_with_their_specs(stack: Stack, kafka: KafkaConnection) -> None:
    admin = AdminClient(kafka.confluent_config())
    topics = admin.list_topics(timeout=10).topics
    for spec in ALL_TOPICS:
        assert spec.name in topics, spec.name
        assert len(topics[spec.name].partitions) == spec.partitions
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    res = ConfigResource(ConfigResource.Type.TOPIC, "procwarden.policy")
    config = admin.describe_configs([res])[res].result(10)
    assert config["cleanup.policy"].value == "compact"


def test_confluent_kafka_round_trip(kafka: KafkaConnection,
                                    topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=3)
    items = [(f"k{i % 5}", f"v{i}") for i in range(200)]
    produce(kafka, topic, items)
    got = consume_all(kafka, topic, len(items))
    assert sorted(got) == sorted(items)
    for key in {k for k, _ in items}:  # order per key is kept
        assert [v for k, v in got if k == key] == [v for k, v in items if k == key]


def test_aiokafka_round_trip(kafka: KafkaConnection, topic_factory: Callable[..., str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.kafka.kafka_options import aiokafka_options

    topic = topic_factory()

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_options(kafka))
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, **aiokafka_options(kafka),
                                    auto_offset_reset="earliest",
                                    group_id=f"t-{uuid.uuid4().hex}")
        await consumer.start()
        values: list[bytes] = []
        try:
            while len(values) < 20:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
                for records in batch.values():
                    values.extend(r.value for r in records if r.value is not None)
        finally:
            await consumer.stop()
        return values

    assert asyncio.run(run()) == [f"m{i}".encode() for i in range(20)]


def test_clickhouse_insert_and_read(clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    conn, db = clickhouse_db
    client = connect(conn)
    applied = apply_migrations(client, db)
    assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
    assert apply_migrations(client, db) == []  # idempotent
    assert applied_versions(client, db) == {m.version for m in MIGRATIONS}
    from datetime import datetime

    rows = [(datetime(2026, 11, 22, 12, 0, i), f"note {i}") for i in range(50)]
    client.execute(f"INSERT INTO {db}.stack_smoke (ts, note) VALUES", rows)
    assert client.execute(f"SELECT count(), max(note) FROM {db}.stack_smoke") == [(50,
                                                                                   "note 9")]
    client.disconnect()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procwarden.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _lists_topics(conn: KafkaConnection) -> bool:
    """Whether `conn` logs in (a metadata answer within a few seconds)."""
    config = {**conn.confluent_config(), "socket.timeout.ms": 3000, "logger": quiet_logger()}
    try:
        return bool(AdminClient(config).list_topics(timeout=5).brokers)
    except KafkaException:
        return False


def test_data_survives_down_and_up(stack: Stack, kafka: KafkaConnection,
                                   topic_factory: Callable[..., str],
                                   clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    """A compacted topic keeps the latest value per key across a broker restart, and the
    ClickHouse rows are still there, after `procwarden stack down` and `up`."""
    topic = topic_factory(**{"cleanup.policy": "compact", "segment.ms": "200",
                             "min.cleanable.dirty.ratio": "0.01"})
    produce(kafka, topic, [(f"g{i % 3}", f"v{i}") for i in range(30)])
    time.sleep(0.5)
    produce(kafka, topic, [("roll", "x")])  # rolls the segment so the old one can be cleaned
    conn, db = clickhouse_db
    client = connect(conn)
    apply_migrations(client, db)
    from datetime import datetime

    client.execute(f"INSERT INTO {db}.stack_smoke (ts, note) VALUES",
                   [(datetime(2026, 1, 1), "kept")])
    client.disconnect()

    # A node added and then removed: on Kafka 4.4.0 deleting a SCRAM user made the broker
    # lose every SCRAM credential (admin's too) at its next start; removal must survive it.
    node = f"gone-{uuid.uuid4().hex[:6]}"
    added = _cli("stack", "add-node", node)
    assert added.returncode == 0, added.stderr
    node_env = dict(line.split("=", 1) for line in added.stdout.splitlines())
    node_conn = replace(kafka, sasl_username=node_env["PROCWARDEN_KAFKA_SASL_USERNAME"],
                        sasl_password_file="", sasl_password=Path(
                            node_env["PROCWARDEN_KAFKA_SASL_PASSWORD_FILE"]).read_text().strip())
    assert _lists_topics(node_conn)
    removed = _cli("stack", "remove-node", node)
    assert removed.returncode == 0, removed.stderr
    assert "ACL(s) deleted" in removed.stderr and not _lists_topics(node_conn)

    down = _cli("stack", "down")
    assert down.returncode == 0, down.stderr
    assert "kafka: stopped" in down.stderr and not stack.status().kafka_ready
    up = _cli("stack", "up")
    assert up.returncode == 0, up.stderr
    assert "already there" in up.stderr and "schema up to date" in up.stderr

    assert not _lists_topics(node_conn)
    latest = {}
    for key, value in consume_all(kafka, topic, 1, timeout=30) + consume_all(
            kafka, topic, 31, timeout=10):
        latest[key] = value
    assert latest == {"g0": "v27", "g1": "v28", "g2": "v29", "roll": "x"}
    client = connect(conn)
    assert client.execute(f"SELECT note FROM {db}.stack_smoke") == [("kept",)]
    client.disconnect()


def test_up_twice_and_status(stack: Stack) -> None:
    again = _cli("stack", "up")
    assert again.returncode == 0, again.stderr
    assert "kafka already running" in again.stderr
    status = _cli("stack", "status")
    assert status.returncode == 0
    assert "kafka       ready" in status.stdout
    assert "clickhouse  ready" in status.stdout and "server 18.16" in status.stdout


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = StackSettings(home=tmp_path, kafka_port=port, kafka_controller_port=port + 1)
        with pytest.raises(StackError, match=rf"port {port} is taken by pid {os.getpid()} "):
            Stack(settings).kafka.start(say=lambda m: None)


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("PROCWARDEN_STACK_KAFKA_PORT", "99999")
    with pytest.raises(ValidationError, match="kafka_port"):
        StackSettings()
    result = subprocess.run([sys.executable, "-m", "procwarden.cli", "stack", "status"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PROCWARDEN_STACK_KAFKA_PORT": "x"})
    assert result.returncode == 2
    assert "bad setting: PROCWARDEN_STACK_KAFKA_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_stack_on_other_ports_and_reset(tmp_path: Path) -> None:
    """Ports and the state folder are settings; `reset` stops it and wipes its data."""
    settings = StackSettings(home=tmp_path / "stack2", kafka_port=19092,
                             kafka_controller_port=19093, clickhouse_tcp_port=19000,
                             clickhouse_http_port=18123, clickhouse_interserver_port=19009)
    other = Stack(settings)
    messages: list[str] = []
    try:
        other.up(say=messages.append)
        assert other.status().up
        assert other.kafka_connection.bootstrap_servers == "127.0.0.1:19092"
        assert any(f"topics: {len(ALL_TOPICS)} created" in m for m in messages)
        assert (tmp_path / "stack2" / "kafka" / "data" / "meta.properties").exists()
    finally:
        other.reset(say=messages.append)
    assert not (tmp_path / "stack2").exists()
    assert not other.status().kafka_pid and not other.status().clickhouse_pid
