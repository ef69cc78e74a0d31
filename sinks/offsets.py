"""Committing what a sink has stored or sent, and how far behind it is."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

__all__ = ["commit_batch"]

log = logging.getLogger("procwarden.sinks")


def commit_batch(consumer: Consumer, batch: Sequence[Message]) -> int:
    """Commit the offsets after each partition's last message in `batch` (synchronously), then
    return how many messages the consumer is behind the ends of its partitions."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        key = (msg.topic() or "", msg.partition() or 0)
        last[key] = max(last.get(key, -1), msg.offset() or 0)
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                        asynchronous=False)
    except KafkaException as exc:
        # What was stored stays stored; a replay after a failed commit collapses downstream.
        log.warning("committing offsets failed: %s", exc)
    behind = 0
    for tp in consumer.assignment():
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=1, cached=True)
            position = consumer.position([tp])[0].offset
        except KafkaException:
            continue
        if position >= 0 and high >= 0:
            behind += max(0, high - position)
    return behind
