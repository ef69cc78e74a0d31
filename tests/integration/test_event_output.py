"""The event decider's producer on the real broker: a flushed output that did not reach Kafka is
not taken as done, and outputs land on the partition Kafka's murmur2 gives their key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.connections import KafkaConnection
from schemas.topics import verdict_partition
from streams.kafka.event_output import DeliveryFailed, KafkaOutput


def test_a_lost_output_fails_the_check_once(kafka: KafkaConnection,
                                            topic_factory: Callable[..., str]) -> None:
    good = topic_factory()
    missing = f"test.missing-{uuid.uuid4().hex[:8]}"  # the broker does not create topics

    async def scenario() -> None:
        output = KafkaOutput(kafka, **{"message.timeout.ms": 1500})
        await output.send(good, b"k", b"1")
        await output.send(missing, b"k", b"2")
        with pytest.raises(DeliveryFailed, match="1 messages were not delivered"):
            await output.delivered()
        await output.send(good, b"k", b"3")
        await output.delivered()  # the next batch stands on its own
        assert output.close() == 0

    asyncio.run(scenario())
    assert _values(kafka, good, 0) == [b"1", b"3"]


def test_outputs_land_on_the_partition_their_key_hashes_to(
        kafka: KafkaConnection, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=6)
    nodes = [f"node-{i}" for i in range(12)]

    async def scenario() -> None:
        output = KafkaOutput(kafka)
        for node in nodes:
            await output.send(topic, node.encode(), node.encode())
        await output.delivered()
        output.close()

    asyncio.run(scenario())
    for partition in range(6):
        expected = [n.encode() for n in nodes if verdict_partition(n, 6) == partition]
        assert _values(kafka, topic, partition) == expected


def _values(kafka: KafkaConnection, topic: str, partition: int) -> list[bytes]:
    consumer = Consumer({**kafka.confluent_config(), "group.id": f"t-{uuid.uuid4().hex[:8]}",
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, partition, 0)])
    values: list[bytes] = []
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "no end of partition reached"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                break
            values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_the_decider_commits_only_what_was_delivered(kafka: KafkaConnection,
                                                     topic_factory: Callable[..., str]) -> None:
    """The event decider on the real broker: a batch whose outputs were delivered is committed;
    a batch with a lost output crashes the decider and stays uncommitted, to be decided again."""
    from confluent_kafka import Producer

    from streams.kafka.decider import EventDecider
    from streams.worker.handlers import RawMessage

    events, outputs = topic_factory(), topic_factory()
    missing = f"test.missing-{uuid.uuid4().hex[:8]}"
    group = f"t-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka.confluent_config())
    for i in range(5):
        producer.produce(events, f"ok-{i}".encode(), b"k")
    producer.flush(10)

    async def scenario(lose_outputs: bool) -> EventDecider:
        output = KafkaOutput(kafka, **{"message.timeout.ms": 1500})
        ready = asyncio.Event()
        ready.set()

        async def handle(msg: RawMessage) -> None:
            await output.send(missing if msg.value == b"lost" else outputs, b"k", msg.value)

        async def end_batch() -> None:
            return None

        decider = EventDecider(kafka, [events], group, handle, end_batch, output, ready)
        await decider.start()
        for _ in range(200):
            if decider.crashed or _committed(kafka, group, events) >= (6 if lose_outputs else 5):
                break
            await asyncio.sleep(0.05)
        await decider.stop()
        return decider

    decider = asyncio.run(scenario(lose_outputs=False))
    assert not decider.crashed
    assert _committed(kafka, group, events) == 5
    assert _values(kafka, outputs, 0) == [f"ok-{i}".encode() for i in range(5)]

    producer.produce(events, b"lost", b"k")
    producer.flush(10)
    decider = asyncio.run(scenario(lose_outputs=True))
    assert decider.crashed
    assert isinstance(decider.crash_reason, DeliveryFailed)
    assert _committed(kafka, group, events) == 5  # the lost output's event is decided again


def _committed(kafka: KafkaConnection, group: str, topic: str) -> int:
    consumer = Consumer({**kafka.confluent_config(), "group.id": group})
    try:
        return max(0, consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        consumer.close()
