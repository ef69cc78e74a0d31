"""Kafka topics from their definitions in `schemas.topics`, created idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewPartitions,
    NewTopic,
)

from procwarden.stack.kafka import quiet_logger
from procwarden.stack.processes import StackError
from schemas.connections import KafkaConnection
from schemas.topics import ALL_TOPICS, TopicSpec

__all__ = ["TopicReport", "delete_prefixed_topics", "ensure_topics", "topic_configs"]


def topic_configs(spec: TopicSpec) -> dict[str, str]:
    if spec.compacted:
        return {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}
    return {"cleanup.policy": "delete", "retention.ms": str(spec.retention_ms)}


@dataclass(frozen=True)
class TopicReport:
    created: tuple[str, ...]
    existing: tuple[str, ...]
    grown: tuple[str, ...]


def ensure_topics(conn: KafkaConnection, specs: Iterable[TopicSpec] = ALL_TOPICS,
                  timeout: float = 30.0) -> TopicReport:
    """Create missing topics with their partitions and cleanup policy; add partitions to a topic
    that has fewer than its spec (never removes any). Safe to run any number of times."""
    config: dict[str, Any] = {**conn.confluent_config(), "logger": quiet_logger()}
    admin = AdminClient(config)
    specs = list(specs)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise StackError(f"cannot reach {conn.describe()}: {exc}") from None
    have = {name: len(t.partitions) for name, t in metadata.topics.items()}
    to_create = [NewTopic(conn.topic(s.name), num_partitions=s.partitions, replication_factor=-1,
                          config=topic_configs(s)) for s in specs if conn.topic(s.name) not in have]
    to_grow = [NewPartitions(conn.topic(s.name), s.partitions) for s in specs
               if 0 < have.get(conn.topic(s.name), 0) < s.partitions]
    created = []
    for topic, future in (admin.create_topics(to_create) if to_create else {}).items():
        try:
            future.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"creating topic {topic} failed: {exc}") from None
    grown = []
    for topic, future in (admin.create_partitions(to_grow) if to_grow else {}).items():
        future.result(timeout)
        grown.append(topic)
    existing = tuple(conn.topic(s.name) for s in specs if conn.topic(s.name) in have)
    return TopicReport(tuple(sorted(created)), existing, tuple(sorted(grown)))


def delete_prefixed_topics(conn: KafkaConnection, prefixes: Iterable[str],
                           timeout: float = 60.0) -> int:
    """Delete every topic whose name starts with one of `prefixes` (what a benchmark or a test
    run created under its own prefix): left behind, thousands of partitions slow the broker for
    everything after. The number deleted."""
    prefixes = tuple(prefixes)
    if not prefixes:
        return 0
    config: dict[str, Any] = {**conn.confluent_config(), "logger": quiet_logger()}
    admin = AdminClient(config)
    names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefixes)]
    for future in admin.delete_topics(names).values() if names else ():
        future.result(timeout)
    return len(names)
