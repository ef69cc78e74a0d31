"""`Pipeline.read_to_end` over a real Kafka: bounded while something keeps writing to the topic
(as the host's own execs keep doing to the exec topic a collector publishes to)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from schemas import ExecEvent
from schemas.connections import KafkaConnection
from schemas.topics import EXEC
from tests.integration.streamkit import Pipeline

BOUND_S = 20.0


@contextmanager
def every(period: float, action: object) -> Iterator[None]:
    """Call `action()` every `period` seconds in a thread until the block ends."""
    assert callable(action)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            action()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def exec_true() -> None:
    pid = os.posix_spawn("/bin/true", ["true"], {})
    os.waitpid(pid, 0)


def test_read_to_end_returns_while_the_topic_keeps_being_written(kafka: KafkaConnection,
                                                                tmp_path: Path) -> None:
    pipe = Pipeline(kafka, tmp_path)
    sent: list[str] = []
    lock = threading.Lock()

    def write() -> None:
        env = pipe.send(EXEC.name, "w-busy", ExecEvent(workload_id="w-busy", pid=len(sent) + 1,
                                                       path="/bin/true", name="true"))
        with lock:  # send() returns once the record is on the topic (it flushes)
            sent.append(env.event_id)

    with every(0.5, exec_true), every(0.2, write):
        time.sleep(2)
        with lock:
            before = list(sent)
        started = time.monotonic()
        got = pipe.read_to_end(EXEC.name, timeout=BOUND_S)
        took = time.monotonic() - started
    assert len(before) >= 5
    assert took < BOUND_S
    ids = [e.event_id for e in got]
    assert set(before) <= set(ids), f"missing {set(before) - set(ids)}"
    assert len(ids) == len(set(ids)) and set(ids) <= set(sent)
