"""No message stops the ClickHouse sink or the SIEM forwarder (fakes for Kafka and ClickHouse;
the real driver writes every column, so a value it cannot write fails as it would for real)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from clickhouse_driver.errors import NetworkError

from procwarden.testbed.clickhouse import FakeClickHouse
from schemas import (
    CollectorReport,
    Decision,
    DlqEntry,
    Envelope,
    EventKind,
    ExecEvent,
    HoldSettings,
    Verdict,
    decode_envelope,
    encode,
)
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.records import replace
from schemas.topics import COLLECTOR_REPORTS, VERDICTS
from tests.unit.test_siem_formats import BASE

DEEP = (b'{"schema_version":1,"event_id":"d","node":"n","cluster":"c","ts":1,"kind":"verdict",'
        b'"payload":' + b"[" * 1000 + b"]" * 1000 + b"}")


class FakeMessage:
    def __init__(self, topic: str, offset: int, value: bytes | None, key: bytes = b"k") -> None:
        self._topic, self._offset, self._value, self._key = topic, offset, value, key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.batches: list[list[FakeMessage]] = []
        self.committed: list[Any] = []

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.committed.append([(o.topic, o.offset) for o in offsets])

    def assignment(self) -> list[Any]:
        return []

    def pause(self, _: Any) -> None: ...

    def resume(self, _: Any) -> None: ...

    def poll(self, _: float) -> None: ...

    def close(self) -> None: ...


class FakeProducer:
    fail = False

    def __init__(self, config: dict[str, Any]) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any = None) -> None:
        if FakeProducer.fail:
            raise BufferError("Local: Queue full")
        self.sent.append((topic, key, value))

    def poll(self, _: float) -> int:
        return 0

    def flush(self, _: float) -> int:
        return 0

    def entries(self) -> list[DlqEntry]:
        return [decode_envelope(v).payload for _, _, v in self.sent]  # type: ignore[misc]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sinks.clickhouse.writer.Consumer", FakeConsumer)
    monkeypatch.setattr("sinks.siem.forwarder.Consumer", FakeConsumer)
    monkeypatch.setattr("sinks.dead_letters.Producer", FakeProducer)
    monkeypatch.setattr(FakeProducer, "fail", False)


def _decision(i: int, **kw: Any) -> bytes:
    d = Decision(event_id=f"ev-{i}", event_kind=EventKind.EXEC, workload_id="c1", node="n",
                 verdict=Verdict.ALLOW, reason="rule", group="g", pid=100 + i, name="ls",
                 path="/bin/ls", user="root", ts=1_700_000_000.0 + i)
    return encode(Envelope.wrap(replace(d, **kw), event_id=f"v-{i}", node="n", ts=1.0))


def _writer(clickhouse: FakeClickHouse) -> Any:
    from sinks.clickhouse.writer import ClickHouseWriter

    writer = ClickHouseWriter(KafkaConnection(), ClickHouseConnection(database="db"))
    writer._client = clickhouse  # type: ignore[assignment]
    writer._clickhouse = lambda: clickhouse  # type: ignore[method-assign]
    return writer


def test_the_sink_dead_letters_what_it_cannot_store_and_stores_the_rest(fakes: None) -> None:
    ch = FakeClickHouse()
    writer = _writer(ch)
    report = encode(Envelope.wrap(CollectorReport(node="n", started_at=1.7e9, execs=-1,
                                                  reported=0), event_id="r", node="n", ts=1.0))
    batch = [FakeMessage(VERDICTS.name, 0, _decision(0)),
             FakeMessage(VERDICTS.name, 1, DEEP),  # RecursionError out of msgspec before
             FakeMessage(VERDICTS.name, 2, b"\xff not json"),
             FakeMessage(VERDICTS.name, 3, _decision(3, pid=2**40)),  # UInt32: stalled the sink
             FakeMessage(VERDICTS.name, 4, _decision(4, ts=-5.0)),  # DateTime: the same
             FakeMessage(VERDICTS.name, 5, None),  # a tombstone: nothing to store
             FakeMessage(COLLECTOR_REPORTS.name, 6, report),  # UInt64 execs
             FakeMessage(VERDICTS.name, 7, encode(Envelope.wrap(
                 ExecEvent("c1", 1, "/bin/ls"), event_id="x", node="n", ts=1.0))),  # no table
             FakeMessage(VERDICTS.name, 8, _decision(8))]
    writer.store(batch)
    assert sorted(r[2] for r in ch.rows["events"]) == ["ev-0", "ev-8"]
    entries = {e.offset: e for e in writer.dead_letters.producer.entries()}
    assert sorted(entries) == [1, 2, 3, 4, 6, 7]
    assert all(e.stage == "sink-clickhouse" and e.topic for e in entries.values())
    assert "nesting deeper than 64 levels" in entries[1].error
    assert "not valid JSON" in entries[2].error
    assert "pid" in entries[3].error and "UInt32" in entries[3].error
    assert "exec does not belong on procwarden.verdicts" in entries[7].error
    assert entries[1].value_length == len(DEEP) and len(entries[1].value) <= 16 * 1024


def test_hold_settings_are_skipped_on_purpose_not_stored_nor_dead_lettered(fakes: None) -> None:
    """A control message to one collector shares the verdicts topic: the sink leaves it out of
    every table and says nothing of it (docs/soc.md), while the decisions around it are stored."""
    ch = FakeClickHouse()
    writer = _writer(ch)
    hold = encode(Envelope.wrap(HoldSettings(
        workload_id="c1", node="n", group="g", policy_version=2, pre_exec=True,
        pre_write=False, policy_stamp="s1"), event_id="h:hold:c1", node="n", ts=1.0))
    writer.store([FakeMessage(VERDICTS.name, 0, _decision(0)),
                  FakeMessage(VERDICTS.name, 1, hold),
                  FakeMessage(VERDICTS.name, 2, _decision(2))])
    assert sorted(r[2] for r in ch.rows["events"]) == ["ev-0", "ev-2"]
    assert list(ch.rows) == ["events"] and not writer.dead_letters.producer.sent


def test_a_batch_over_the_partition_limit_is_split_not_retried_forever(fakes: None) -> None:
    ch = FakeClickHouse(max_partitions=4)
    writer = _writer(ch)
    day = 86_400.0
    batch = [FakeMessage(VERDICTS.name, i, _decision(i, ts=1_700_000_000.0 + i * day))
             for i in range(40)]  # 40 days: the server refuses the whole INSERT
    writer.store(batch)
    assert len(ch.rows["events"]) == 40  # all stored, in INSERTs of at most 4 days
    assert not writer.dead_letters.producer.sent
    assert ch.inserts < 40


def test_a_server_outage_is_still_retried_as_a_whole(fakes: None) -> None:
    ch = FakeClickHouse()
    ch.down = True
    writer = _writer(ch)
    with pytest.raises(NetworkError):
        writer.store([FakeMessage(VERDICTS.name, 0, _decision(0))])
    assert not writer.dead_letters.producer.sent  # nothing is dead-lettered for an outage


def test_the_sink_loop_commits_after_storing_and_survives_a_lost_dead_letter(
        fakes: None) -> None:
    from transport.guard import DEAD_LETTERS

    ch = FakeClickHouse()
    writer = _writer(ch)
    writer._ensure_schema = lambda: None  # type: ignore[method-assign]
    writer.consumer.batches = [[FakeMessage(VERDICTS.name, 0, DEEP)],
                               [FakeMessage(VERDICTS.name, 1, _decision(1))]]
    FakeProducer.fail = True  # the DLQ cannot take the dead letter: counted, not fatal
    lost = DEAD_LETTERS.labels("sink-clickhouse", VERDICTS.name, "dlq_failed")._value.get()
    writer.run(_after(40))
    assert DEAD_LETTERS.labels("sink-clickhouse", VERDICTS.name,
                               "dlq_failed")._value.get() == lost + 1
    assert [r[2] for r in ch.rows["events"]] == ["ev-1"]
    assert writer.consumer.committed == [[(VERDICTS.name, 2)]]  # after the batch was stored


def _after(calls: int) -> Any:
    """A `should_stop` that says stop after so many questions."""
    asked = iter(range(calls))
    return lambda: next(asked, None) is None


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, messages: Sequence[bytes]) -> None:
        self.sent.extend(messages)

    def close(self) -> None: ...


def test_the_siem_forwarder_dead_letters_bad_messages_and_forwards_the_rest(
        fakes: None) -> None:
    from sinks.siem.forwarder import Destination, SiemForwarder

    out = FakeTransport()
    forwarder = SiemForwarder(KafkaConnection(), [Destination("t", out, "cef")])

    def wrap(incident: Any, i: int) -> bytes:
        return encode(Envelope.wrap(incident, event_id=f"s-{i}", node="n", ts=1.0))

    huge = replace(BASE, id="huge", proc_cmd="A" * 900_000)
    bad_time = replace(BASE, id="t", reported_timestamp=10**30)  # OverflowError in datetime
    batch = [FakeMessage("procwarden.security-events", 0, wrap(replace(BASE, id="a"), 0)),
             FakeMessage("procwarden.security-events", 1, DEEP.replace(b"verdict",
                                                                       b"security_event")),
             FakeMessage("procwarden.security-events", 2, wrap(huge, 2)),
             FakeMessage("procwarden.security-events", 3, _decision(3)),
             FakeMessage("procwarden.security-events", 4, None),
             FakeMessage("procwarden.security-events", 5, wrap(bad_time, 5)),
             FakeMessage("procwarden.security-events", 6, wrap(replace(BASE, id="b"), 6))]
    forwarder._consumer.batches = [batch]
    forwarder.run(_after(3))
    ids = [re.search(rb"externalId=(\S+)", line).group(1) for line in out.sent]  # type: ignore[union-attr]
    assert ids == [b"a", b"huge", b"t", b"b"]
    assert all(len(line) <= 64 * 1024 for line in out.sent)
    entries = {e.offset: e for e in forwarder.dead_letters.producer.entries()}
    assert sorted(entries) == [1, 3, 4]
    assert all(e.stage == "siem" for e in entries.values())
    assert "does not belong" in entries[3].error
    assert forwarder._consumer.committed == [[("procwarden.security-events", 7)]]
    assert orjson.loads(encode(entries[1]))["value_length"] == len(DEEP) + 7


def test_the_sinks_are_ready_only_while_their_destinations_take_what_they_read(
        fakes: None, tmp_path: Any) -> None:
    from sinks.siem.forwarder import Destination, SiemForwarder
    from transport import Health, read_health

    class Flaky(FakeTransport):
        down = 1  # the first send fails, as a SIEM that is away

        def send(self, messages: Sequence[bytes]) -> None:
            if self.down:
                self.down -= 1
                raise ConnectionRefusedError("connection refused")
            super().send(messages)

    health = Health("unit-siem", tmp_path / "siem.json")
    forwarder = SiemForwarder(KafkaConnection(), [Destination("t", Flaky(), "cef")],
                              health=health, max_backoff=0.01)
    wrap = encode(Envelope.wrap(replace(BASE, id="a"), event_id="s-0", node="n", ts=1.0))
    forwarder._consumer.batches = [[FakeMessage("procwarden.security-events", 0, wrap)]]
    states: list[str] = []
    original_part = health.part

    def part(name: str, problem: str = "") -> None:
        original_part(name, problem)
        states.append(read_health(tmp_path / "siem.json")[0])

    health.part = part  # type: ignore[method-assign]
    forwarder.run(_after(3))
    assert states[0] == "ready"
    assert any(s.startswith("not ready: t: sending failed") for s in states), states
    assert states[-1] == "ready"

    ch = FakeClickHouse()
    ch.down = True
    sink_health = Health("unit-sink", tmp_path / "sink.json")
    writer = _writer(ch)
    writer.health = sink_health
    writer.max_backoff = 0.01
    writer.consumer.batches = [[FakeMessage("procwarden.verdicts", 0, _decision(1))]]
    told: list[str] = []
    original_sink_part = sink_health.part

    def sink_part(name: str, problem: str = "") -> None:
        original_sink_part(name, problem)
        told.append(read_health(tmp_path / "sink.json")[0])
        if problem:
            ch.down = False  # back after the first failure

    sink_health.part = sink_part  # type: ignore[method-assign]
    writer._ensure_schema = lambda: None  # type: ignore[method-assign]
    writer.run(lambda: bool(ch.rows))  # until the batch is stored
    assert told[0] == "ready"
    assert any(s.startswith("not ready: clickhouse: storing failed") for s in told), told
    assert told[-1] == "ready"
