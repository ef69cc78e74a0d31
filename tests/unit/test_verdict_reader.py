"""The collector's verdict reader, message by message, with no Kafka: whatever a verdict-topic
message is, it is counted and the reader goes on (a collector may not write the DLQ)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from collectors.enforcer import Enforcer
from collectors.settings import CollectorSettings
from collectors.workloads import WorkloadResolver
from schemas import Decision, Envelope, EventKind, ExitEvent, Verdict, encode
from schemas.connections import KafkaConnection
from transport import Health

NODE = "node-unit"
TOPIC = "procwarden.verdicts"


def _enforcer(tmp_path: Path) -> Enforcer:
    settings = CollectorSettings(node=NODE, state_dir=tmp_path, dry_run=True)
    return Enforcer(settings, KafkaConnection(), WorkloadResolver(node=NODE),
                    lambda *a, **k: "", health=Health("unit-collector"),
                    cannot_go_on=lambda why: None)


def _wire(payload: object) -> bytes:
    return encode(Envelope.wrap(payload, event_id="v1", node=NODE, ts=time.time(),  # type: ignore[arg-type]
                                cluster="test"))


def _block(pid: int) -> Decision:
    return Decision(event_id="e1", event_kind=EventKind.EXEC, workload_id="w", node=NODE,
                    verdict=Verdict.BLOCK, reason="test", pid=pid)


def _count(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_dead_letters_total", {
        "stage": "collector", "topic": TOPIC, "reason": reason}) or 0.0


def _feed(e: Enforcer, value: bytes) -> None:
    e.guard.run(partial(e.on_message, value), topic=TOPIC, partition=0, offset=1, key=None,
                value=value)


@pytest.mark.parametrize("value", [
    b'{"schema_version":1,"kind":"verdict","payload":' + b"[" * 1000 + b"]" * 1000 + b"}",
    b"\xff\xfe not json",
    _wire(ExitEvent("w", 5)),  # a record, but not a verdict
    _wire(_block(2**40)),  # a pid no process can have (its kill raised before)
    _wire(_block(0)),
    _wire(_block(1)),
], ids=["nested", "bytes", "not-a-verdict", "huge-pid", "pid-0", "init"])
def test_a_bad_verdict_message_is_counted_and_the_next_one_acted_on(
        tmp_path: Path, value: bytes) -> None:
    e = _enforcer(tmp_path)
    before = _count("invalid")
    _feed(e, value)
    assert _count("invalid") == before + 1 and e.dead_letters == 1
    acted: list[Decision] = []
    e.on_verdict = acted.append  # type: ignore[method-assign]
    _feed(e, _wire(_block(4242)))
    assert [d.pid for d in acted] == [4242] and e.dead_letters == 1


def test_a_failure_of_the_readers_own_code_is_counted_as_failed(tmp_path: Path) -> None:
    e = _enforcer(tmp_path)

    def broken(d: Decision) -> None:
        raise RuntimeError("a bug")

    e.on_verdict = broken  # type: ignore[method-assign]
    before = _count("failed")
    _feed(e, _wire(_block(4242)))
    assert _count("failed") == before + 1 and e.dead_letters == 1


def test_another_nodes_verdict_is_ignored(tmp_path: Path) -> None:
    e = _enforcer(tmp_path)
    acted: list[Decision] = []
    e.on_verdict = acted.append  # type: ignore[method-assign]
    other = Decision(event_id="e2", event_kind=EventKind.EXEC, workload_id="w", node="elsewhere",
                     verdict=Verdict.BLOCK, reason="test", pid=4242)
    _feed(e, _wire(other))
    assert acted == [] and e.dead_letters == 0
