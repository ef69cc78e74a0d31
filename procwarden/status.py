"""`procwarden status`: the stack, the roles, how far behind each consumer is, and what was
decided last."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from procwarden.roles import Roles
from procwarden.stack import Stack
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import EXEC, FILE, POLICY_UPDATES, SECURITY_EVENTS, VERDICTS, WORKLOADS
from sinks.clickhouse.migrations import connect

__all__ = ["consumer_lag", "report"]

# Consumer group -> the topics it reads (the roles' default group ids).
CONSUMERS = {
    "procwarden-streams-events": (EXEC.name, FILE.name),
    "procwarden-streams": (WORKLOADS.name, POLICY_UPDATES.name),
    "procwarden-sink-clickhouse": (VERDICTS.name, SECURITY_EVENTS.name),
    "procwarden-siem": (SECURITY_EVENTS.name,),
}


def consumer_lag(kafka: KafkaConnection, group: str, topics: tuple[str, ...]) -> int | None:
    """Messages the group has not committed yet, over all partitions; None if it never did."""
    consumer = Consumer({**kafka.confluent_config(), "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = []
        for name in topics:
            topic = kafka.topic(name)
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            parts += [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(parts, timeout=5)
        if all(tp.offset < 0 for tp in committed):
            return None
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=5)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def report() -> str:
    stack = Stack()
    status = stack.status()
    lines = ["stack:", *("  " + line for line in status.lines(stack)), "roles:"]
    lines += ["  " + line for line in Roles().status()]
    if not status.up:
        lines.append("(the stack is not up: `procwarden up`)")
        return "\n".join(lines)
    kafka = KafkaConnection.from_env()
    lines.append("consumer lag (messages not yet processed):")
    for group, topics in CONSUMERS.items():
        try:
            lag = consumer_lag(kafka, group, topics)
        except KafkaException as exc:
            lines.append(f"  {group:28} unknown ({exc})")
            continue
        lines.append(f"  {group:28} {'never committed' if lag is None else lag}")
    conn = ClickHouseConnection.from_env()
    client = connect(conn)
    try:
        rows = client.execute(
            f"SELECT ts, verdict, group_name, name, path, reason FROM {conn.database}.events "
            "WHERE verdict != 'none' ORDER BY ts DESC LIMIT 8")
    finally:
        client.disconnect()
    lines.append("latest decisions (ClickHouse):")
    lines += [f"  {ts} {verdict:6} {group:18} {name:10} {path:24} {reason}"
              for ts, verdict, group, name, path, reason in rows] or ["  (none yet)"]
    return "\n".join(lines)
