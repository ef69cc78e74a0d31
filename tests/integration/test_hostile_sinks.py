"""Hostile messages against the sinks on the real Kafka, ClickHouse and rsyslog: each one is
dead-lettered (bounded, stage named) and the sink goes on storing and forwarding the rest."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from schemas import CollectorReport, Incident
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.records import replace
from schemas.topics import COLLECTOR_REPORTS, DLQ, SECURITY_EVENTS, VERDICTS
from sinks.clickhouse.migrations import connect
from sinks.siem.forwarder import Destination, SiemForwarder
from sinks.siem.transports import syslog_transport
from tests.integration.streamkit import NODE, Pipeline
from tests.integration.test_siem import _lines, rsyslog  # noqa: F401 (the fixture)
from tests.integration.test_sink_clickhouse import Running, decision, wait_count, writer_for
from tests.unit.test_siem_formats import BASE, _ext

DEEP = (b'{"schema_version":1,"event_id":"d","node":"n","cluster":"c","ts":1,"kind":"%s",'
        b'"payload":' + b"[" * 1000 + b"]" * 1000 + b"}")


@pytest.fixture
def pipe(kafka: KafkaConnection, tmp_path: Path) -> Pipeline:
    return Pipeline(kafka, tmp_path)


def _dead_letters(pipe: Pipeline, stage: str, expected: int, timeout: float = 20.0) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    entries = []
    while time.monotonic() < deadline:
        entries = [e.payload for e in pipe.read_all(DLQ.name, settle=0.5)
                   if getattr(e.payload, "stage", "") == stage]
        if len(entries) >= expected:
            break
    return entries


def test_the_clickhouse_sink_outlives_poison_messages(
        pipe: Pipeline, clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    # A 1,000-level payload crashed the sink (RecursionError); a pid past UInt32 or a negative
    # count stalled it (the driver's TypeMismatchError was retried as an outage, forever).
    _, db = clickhouse_db
    pipe.send(VERDICTS.name, NODE, decision(0))
    pipe.send_raw(VERDICTS.name, NODE, DEEP % b"verdict")
    pipe.send(VERDICTS.name, NODE, replace(decision(1), pid=2**40))
    pipe.send(COLLECTOR_REPORTS.name, NODE, CollectorReport(node=NODE, started_at=1.7e9,
                                                            execs=-1, reported=0))
    # Timestamps over 150 days in one batch: more partitions than one INSERT may touch.
    for i in range(2, 152):
        pipe.send(VERDICTS.name, NODE, replace(decision(i), ts=1_700_000_000.0 + i * 86_400))
    pipe.send(COLLECTOR_REPORTS.name, NODE, CollectorReport(node=NODE, started_at=1.7e9,
                                                            execs=5, reported=5))
    running = Running(writer_for(pipe, db))
    try:
        assert wait_count(db, "events", 151) == 151
        assert wait_count(db, "collector_reports", 1) == 1
        entries = _dead_letters(pipe, "sink-clickhouse", 3)
        assert running.thread.is_alive() and running.error is None
    finally:
        running.halt()
    assert running.error is None
    by_error = sorted(e.error for e in entries)
    assert len(entries) == 3, by_error
    assert any("nesting deeper than 64 levels" in e for e in by_error)
    assert any("pid" in e and "UInt32" in e for e in by_error)
    assert any("execs" in e for e in by_error)
    deep = next(e for e in entries if "nesting" in e.error)
    assert deep.value_length == len(DEEP % b"verdict") and deep.value_sha256
    client = connect(ClickHouseConnection())
    try:
        assert client.execute(f"SELECT count() FROM {db}.events WHERE pid = 101") == [(0,)]
    finally:
        client.disconnect()


def _incident(i: int, **kw: object) -> Incident:
    return replace(BASE, **{"id": f"inc-{i}", "proc_cmd": f"cmd {i}", **kw})  # type: ignore[arg-type]


def test_a_900_kb_command_line_reaches_rsyslog_as_one_bounded_message(
        pipe: Pipeline, rsyslog: dict[str, object]) -> None:  # noqa: F811
    # It went out whole (922 KB); rsyslog (64 KiB) cut it and read the next incidents as
    # 64 KiB chunks of it. Over the same connection: a deeply nested message and control
    # characters, which rsyslog would show as #033 and the like.
    pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(0, proc_cmd="A" * 900_000))
    pipe.send_raw(SECURITY_EVENTS.name, "nv.web.demo", DEEP % b"security_event")
    pipe.send(SECURITY_EVENTS.name, "nv.web.demo",
              _incident(1, proc_cmd="evil\x1b[2J\x0bx\u2028y"))
    for i in range(2, 52):
        pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(i))
    for fmt in ("json", "cef"):
        tcp = Destination("tcp", syslog_transport(f"tcp://127.0.0.1:{rsyslog['tcp']}"), fmt)
        forwarder = SiemForwarder(pipe.kafka, [tcp], group_id=f"siem-{fmt}-{pipe.prefix}")
        deadline = time.monotonic() + 30
        forwarder.run(lambda f=forwarder, d=deadline: f.forwarded >= 52  # type: ignore[misc]
                      or time.monotonic() > d)
        forwarder.close()
    lines = _lines(rsyslog["out"], 104, timeout=30)  # type: ignore[arg-type]
    assert len(lines) == 104, [len(ln) for ln in lines][:10]
    assert all(len(ln.encode()) <= 64 * 1024 for ln in lines)
    json_lines, cef_lines = lines[:52], lines[52:]
    for group in (json_lines, cef_lines):
        ids = [m.group(1) for ln in group if (m := re.search(r'id="(inc-\d+)"', ln))]
        assert ids == [f"inc-{i}" for i in range(52)]
        assert "[cut, 900000 characters]" in group[0]
        assert group[0].count("A") > 50_000  # what fits of the command line is kept
        assert "#033" not in group[1] and "#013" not in group[1] and "\x1b" not in group[1]
        assert "\\u001b[2J\\u000bx\\u2028y" in group[1]
    ext = _ext(cef_lines[2][cef_lines[2].index("CEF:0|"):])
    assert ext["cmd"] == "cmd 2" and ext["externalId"] == "inc-2"
    assert len(_dead_letters(pipe, "siem", 2)) == 2  # the nested message, once per run
