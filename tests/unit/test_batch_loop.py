"""transport/batch_loop.py over a fake consumer: what is committed when, and how a failing
destination is retried with the partitions paused."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from transport.batch_loop import BatchLoop
from transport.guard import MessageGuard


class Msg:
    def __init__(self, offset: int, partition: int = 0) -> None:
        self._offset, self._partition = offset, partition

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"


class Consumer:
    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches = batches
        self.committed: list[list[tuple[int, int]]] = []
        self.calls: list[str] = []

    def consume(self, n: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        assert not asynchronous  # a sink's commit waits: the next batch follows it
        self.committed.append(sorted((o.partition, o.offset) for o in offsets))

    def assignment(self) -> list[Any]:
        return ["tp"]

    def pause(self, _: Any) -> None:
        self.calls.append("pause")

    def resume(self, _: Any) -> None:
        self.calls.append("resume")

    def poll(self, _: float) -> None:
        self.calls.append("poll")

    def get_watermark_offsets(self, *_: Any, **__: Any) -> tuple[int, int]:
        return 0, 10

    def position(self, tps: list[Any]) -> list[Any]:
        return [type("P", (), {"offset": 7})()]


def _loop(consumer: Consumer, **kw: Any) -> tuple[BatchLoop, Gauge]:
    lag = Gauge("unit_lag", "lag", registry=CollectorRegistry())
    dead: list[Any] = []
    guard = MessageGuard("unit", dead.append)
    return BatchLoop(consumer, guard, lag, batch_size=100, batch_seconds=0.5,  # type: ignore[arg-type]
                     max_backoff=0.01, **kw), lag


def _stop_after(rounds: int) -> Any:
    left = iter(range(rounds))
    return lambda: next(left, None) is None


def test_a_batch_is_committed_after_each_partitions_last_message_once_handled() -> None:
    consumer = Consumer([[Msg(4), Msg(9, 1), Msg(5)], [Msg(6)]])
    loop, lag = _loop(consumer)
    seen: list[list[int]] = []
    loop.run(lambda batch, stop: seen.append([m.offset() for m in batch]) is None,
             _stop_after(2))
    assert seen == [[4, 9, 5, 6]]  # the fake's two reads are one batch
    assert consumer.committed == [[(0, 7), (1, 10)]]
    assert lag._value.get() == 3  # type: ignore[attr-defined]


def test_a_batch_its_handler_did_not_finish_is_not_committed() -> None:
    consumer = Consumer([[Msg(0)]])
    loop, _ = _loop(consumer)
    loop.run(lambda batch, stop: False, _stop_after(2))
    assert consumer.committed == []


def test_a_failing_attempt_is_retried_with_the_partitions_paused_then_resumed() -> None:
    consumer = Consumer([])
    loop, _ = _loop(consumer)
    tries: list[int] = []
    failures: list[float] = []
    recovered: list[bool] = []

    def attempt() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise OSError("down")
    assert loop.retry(attempt, (OSError,), lambda: False, lambda e, d: failures.append(d),
                      on_recovery=lambda: recovered.append(True))
    assert len(tries) == 3 and failures == [0.2, 0.01]
    assert consumer.calls[0] == "pause" and consumer.calls[-1] == "resume"
    assert consumer.calls.count("pause") == 1 and "poll" in consumer.calls
    assert recovered == [True]


def test_a_stop_during_the_retries_gives_up_without_resuming() -> None:
    consumer = Consumer([])
    loop, _ = _loop(consumer)

    def attempt() -> None:
        raise OSError("down")
    assert not loop.retry(attempt, (OSError,), lambda: True, lambda e, d: None)
    assert "resume" not in consumer.calls


def test_another_exception_is_not_retried() -> None:
    loop, _ = _loop(Consumer([]))

    def attempt() -> None:
        raise ValueError("a bug, not an outage")
    try:
        loop.retry(attempt, (OSError,), lambda: False, lambda e, d: None)
    except ValueError:
        return
    raise AssertionError("a ValueError was swallowed")


def test_a_guarded_message_that_raises_is_dead_lettered_and_gives_none() -> None:
    consumer = Consumer([])
    lag = Gauge("unit_lag2", "lag", registry=CollectorRegistry())
    dead: list[Any] = []
    loop = BatchLoop(consumer, MessageGuard("unit", dead.append), lag,  # type: ignore[arg-type]
                     batch_size=10, batch_seconds=0.1, max_backoff=0.01)

    def boom() -> int:
        raise ValueError("bad message")
    assert loop.guarded(Msg(3), boom) is None  # type: ignore[arg-type]
    assert loop.guarded(Msg(4), lambda: 5) == 5  # type: ignore[arg-type]
    assert [e.offset for e in dead] == [3]
