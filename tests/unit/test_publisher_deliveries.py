"""The stream app's publisher: a flushed output that did not reach Kafka is not taken as done."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.app import DeliveryFailed, FaustPublisher


class _Producer:
    """Stands in for Faust's producer: each send's delivery is decided by the test."""

    def __init__(self, fail: set[bytes]) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, int | None]] = []
        self.flushed = 0

    async def send(self, topic: str, key: bytes, value: bytes | None, *, partition: int | None,
                   timestamp: Any, headers: Any) -> asyncio.Future[None]:
        self.sent.append((topic, key, partition))
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key in self.fail:
            delivery.set_exception(TimeoutError("batch expired"))
        else:
            delivery.set_result(None)
        return delivery

    async def flush(self) -> None:
        self.flushed += 1

    def key_partition(self, topic: str, key: bytes) -> Any:
        return type("TP", (), {"partition": len(key) % 3})()


class _App:
    def __init__(self, producer: _Producer) -> None:
        self.producer = producer


def test_a_lost_output_fails_the_check_and_is_reported_once() -> None:
    async def scenario() -> None:
        producer = _Producer(fail={b"lost"})
        publisher = FaustPublisher(_App(producer))
        await publisher.send("t", b"ok", b"1")
        await publisher.send("t", b"lost", b"2")
        with pytest.raises(DeliveryFailed, match="1 of 2 messages were not delivered"):
            await publisher.delivered()
        assert producer.flushed == 1
        await publisher.send("t", b"ok", b"3")
        await publisher.delivered()  # the next batch stands on its own

    asyncio.run(scenario())


def test_each_key_is_hashed_once_the_topic_is_known() -> None:
    async def scenario() -> None:
        producer = _Producer(fail=set())
        publisher = FaustPublisher(_App(producer))
        for _ in range(3):
            await publisher.send("t", b"node-1", b"v")
        # The first send lets the producer learn the topic; later ones name the partition.
        assert [p for _, _, p in producer.sent] == [None, 6 % 3, 6 % 3]

    asyncio.run(scenario())
