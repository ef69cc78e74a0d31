"""The event decider's consume-decide-commit loop (streams/kafka/decider.py) over a fake consumer (a
scripted list of batches that records its commits) and a fake output, with the worker's real
handlers: no Kafka.

The consumer is built by the decider itself (`confluent_kafka.Consumer` in `on_start`), so the
fake replaces that name in `streams.kafka.decider`; the loop, the handlers and the commits are the
real ones."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest

import streams.kafka.decider
from schemas import Envelope, ExecEvent, encode
from schemas.topics import EXEC
from streams.kafka.decider import EventDecider
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.session import DecisionSession
from tests.unit.test_handlers import KAFKA, WL, FakePublisher, announce

TOPIC = KAFKA.topic(EXEC.name)


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes, key: bytes = b"k") -> None:
        self._partition, self._offset, self._value, self._key = partition, offset, value, key

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out the scripted batches, one per consume call that asks for a batch; records
    each commit with what the log held when it was made."""

    made: ClassVar[list[FakeConsumer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.batches: deque[list[FakeMessage] | Callable[[], list[FakeMessage]]] = deque()
        self.commits: list[dict[tuple[str, int], int]] = []
        self.log: list[str] = []
        self.on_revoke: Any = None
        self.closed = False
        FakeConsumer.made.append(self)

    def subscribe(self, topics: list[str], on_revoke: Any = None, on_lost: Any = None) -> None:
        self.topics, self.on_revoke = topics, on_revoke

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if timeout == 0 or not self.batches:
            if timeout:
                time.sleep(min(timeout, 0.01))
            return []
        batch = self.batches.popleft()
        return batch() if callable(batch) else batch

    def commit(self, offsets: Any, asynchronous: bool = True) -> None:
        point = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self.commits.append(point)
        self.log.append(f"commit {sorted(point.items())}")

    def assignment(self) -> list[Any]:
        return []

    def position(self, partitions: Any) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


class FakeOutput(FakePublisher):
    """The decider's producer: `delivered` is where a batch's outputs are made sure of."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.fail: Exception | None = None

    async def delivered(self) -> None:
        self.log.append(f"delivered {len(self.sent)}")
        if self.fail is not None:
            raise self.fail

    def close(self, timeout: float = 10.0) -> int:
        return 0


_offsets: dict[int, int] = {}


def event(path: str = "/bin/ls", partition: int = 0, workload: str = WL.id,
          value: bytes | None = None) -> FakeMessage:
    offset = _offsets.setdefault(partition, 0)
    _offsets[partition] = offset + 1
    if value is None:
        value = encode(Envelope.wrap(ExecEvent(workload_id=workload, pid=1, path=path,
                                               name=path.rsplit("/", 1)[-1]),
                                     event_id=f"p{partition}-{offset}", node="node-1",
                                     ts=time.time()))
    return FakeMessage(partition, offset, value, workload.encode())


class World:
    def __init__(self, handlers: Handlers, decider: EventDecider, consumer: FakeConsumer,
                 output: FakeOutput, failures: list[BaseException]) -> None:
        self.handlers, self.decider, self.consumer = handlers, decider, consumer
        self.output, self.failures = output, failures


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def run_world(monkeypatch: pytest.MonkeyPatch,
              script: Callable[[World], Awaitable[None]], **handler_kw: Any) -> None:
    monkeypatch.setattr(streams.kafka.decider, "Consumer", FakeConsumer)

    async def go() -> None:
        log: list[str] = []
        output = FakeOutput(log)
        h = Handlers(session=DecisionSession(), publisher=FakePublisher(), decisions=output,
                     kafka=KAFKA, **handler_kw)
        announce(h)
        handled: list[str] = []

        async def handle(msg: RawMessage) -> None:
            await h.on_event(msg)
            handled.append(f"{msg.partition}@{msg.offset}")
            log.append(f"handled {msg.partition}@{msg.offset}")

        async def after_batch() -> None:
            await h.end_batch()
            log.append("after_batch")

        failures: list[BaseException] = []
        decider = EventDecider(KAFKA, [TOPIC], "g", handle, after_batch,
                               output, h.ready, tick=h.tick,  # type: ignore[arg-type]
                               floors=h.waiting_floors, revoked=h.drop_partitions,
                               on_failure=failures.append)
        FakeConsumer.made.clear()
        await decider.start()
        (consumer,) = FakeConsumer.made
        consumer.log = log
        world = World(h, decider, consumer, output, failures)
        try:
            await script(world)
        finally:
            await decider.stop()

    asyncio.run(go())


def test_a_batch_is_committed_only_after_it_was_handled_and_its_outputs_delivered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(w: World) -> None:
        assert w.consumer.config["enable.auto.commit"] is False
        w.consumer.batches.append([event(), event("/bin/cat"), event("/bin/sh", partition=1)])
        await asyncio.sleep(0.05)
        assert not w.decider.running and w.consumer.commits == []  # not ready: nothing read
        w.handlers.ready.set()
        await until(lambda: bool(w.consumer.commits))
        log = w.consumer.log
        # every output of the batch (verdicts, learned rules, process state) handed over before it
        # is made sure of, and that before the commit
        assert log == ["handled 0@0", "handled 0@1", "handled 1@0", "after_batch",
                       f"delivered {len(w.output.sent)}",
                       f"commit {[((TOPIC, 0), 2), ((TOPIC, 1), 1)]}"]
        assert [d.event_id for d in w.output.decisions()] == ["p0-0", "p0-1", "p1-0"]
        assert w.decider.running and w.failures == []

    _offsets.clear()
    run_world(monkeypatch, script)


def test_a_bad_message_is_dead_lettered_with_its_offset_and_the_loop_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(w: World) -> None:
        w.handlers.ready.set()
        w.consumer.batches.append([event(), event(value=b"\xff not json"), event("/bin/cat")])
        w.consumer.batches.append([event("/bin/sh")])
        await until(lambda: len(w.consumer.commits) == 2)
        (letter,) = w.output.letters()
        assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 0, 1)
        assert [d.event_id for d in w.output.decisions()] == ["p0-0", "p0-2", "p0-3"]
        assert w.consumer.commits == [{(TOPIC, 0): 3}, {(TOPIC, 0): 4}]
        assert w.decider.running

    _offsets.clear()
    run_world(monkeypatch, script)


def test_outputs_not_delivered_stop_the_loop_with_nothing_committed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The decider does not pause and resume on an output failure: it stops, its batch
    # uncommitted, and a restarted worker decides it again.
    async def script(w: World) -> None:
        w.handlers.ready.set()
        w.output.fail = ConnectionError("brokers gone")
        w.consumer.batches.append([event(), event("/bin/cat")])
        w.consumer.batches.append([event("/bin/sh")])
        await until(lambda: bool(w.failures))
        await until(lambda: w.decider.should_stop)
        assert w.consumer.commits == []
        assert isinstance(w.decider.failure, ConnectionError) and not w.decider.running
        # reported (each batch in flight may report it): the worker's readiness says so
        assert {str(f) for f in w.failures} == {"brokers gone"}

    _offsets.clear()
    run_world(monkeypatch, script)


def test_an_event_waiting_for_its_workload_holds_its_partitions_commit_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(w: World) -> None:
        w.handlers.ready.set()
        w.consumer.batches.append([event(), event(workload="late"), event("/bin/cat"),
                                   event(partition=1)])
        await until(lambda: bool(w.consumer.commits))
        # partition 0 stops at the waiting event (offset 1); partition 1 moves on
        assert w.consumer.commits == [{(TOPIC, 0): 1, (TOPIC, 1): 1}]
        assert w.handlers.waiting_floors() == {(TOPIC, 0): 1}
        # the wait ends (3 s by default; 0.2 s here): dead-lettered, then the commit moves on
        await until(lambda: len(w.consumer.commits) == 2)
        assert w.consumer.commits[1] == {(TOPIC, 0): 3}
        (letter,) = w.output.letters()
        assert letter.offset == 1 and "not announced within" in letter.error

    _offsets.clear()
    run_world(monkeypatch, script, unknown_workload_wait_s=0.2)


def test_a_revoked_partition_drops_its_waiting_events_and_is_not_committed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import TopicPartition

    async def script(w: World) -> None:
        w.handlers.ready.set()
        w.consumer.batches.append([event(workload="late", partition=2), event(partition=3)])
        await until(lambda: bool(w.consumer.commits))
        assert len(w.handlers.waiting) == 1

        def revoke_then_more() -> list[FakeMessage]:
            w.consumer.on_revoke(w.consumer, [TopicPartition(TOPIC, 2)])
            return [event("/bin/cat", partition=3)]

        w.consumer.batches.append(revoke_then_more)
        await until(lambda: len(w.consumer.commits) == 2)
        assert len(w.handlers.waiting) == 0 and w.handlers.waiting_floors() == {}
        assert w.consumer.commits[1] == {(TOPIC, 3): 2}
        # dropped, not dead-lettered: the partition's new owner reads it again
        await asyncio.sleep(0.3)
        assert w.output.letters() == []

    _offsets.clear()
    run_world(monkeypatch, script, unknown_workload_wait_s=0.2)
