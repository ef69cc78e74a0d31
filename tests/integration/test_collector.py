"""`procwarden collector` on the real kernel, real runc containers and the real Kafka."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from procwarden.stack import Stack
from procwarden.stack.topics import ALL_TOPICS, ensure_topics
from procwarden.testbed.containers import run_container
from schemas import CollectorReport, ExecEvent, ExitEvent, Origin, Verdict, Workload, WorkloadKind
from schemas.connections import KafkaConnection
from schemas.topics import COLLECTOR_REPORTS, EXEC, WORKLOADS
from tests.integration.streamkit import (
    WORKDIR,
    Pipeline,
    running_collector,
    spawn_true,
    wait_for_line,
)


def test_execs_are_published_with_their_workload(kafka: KafkaConnection,
                                                 tmp_path: Path) -> None:
    pipe = Pipeline(kafka, tmp_path)
    with running_collector(pipe, "node-t", tmp_path), \
            run_container(WORKDIR, "web", namespace="demo") as web:
        # Processes that live long enough for /proc to be read: the connector reports pids
        # only (catching the shortest-lived ones needs fanotify, not built yet).
        web.exec("cp", "/bin/busybox", "/tmp/sleep")
        web.exec("/tmp/sleep", "1")  # a runc exec of a new binary
        web.exec("sleep", "1")
        subprocess.run(["sleep", "1"], check=True)  # a host process

        def exec_of(test: object) -> ExecEvent:
            got, _ = pipe.wait_for(EXEC.name, lambda e: isinstance(e.payload, ExecEvent)
                                   and test(e.payload))  # type: ignore[operator]
            assert isinstance(got.payload, ExecEvent)
            return got.payload

        dropped = exec_of(lambda e: e.path == "/tmp/sleep")
        assert dropped.workload_id == web.id
        assert (dropped.origin, dropped.family, dropped.runtime_injected) == (
            Origin.NEW, False, True)
        ident = exec_of(lambda e: e.argv == ("sleep", "1") and e.workload_id == web.id)
        assert ident.path == "/bin/busybox" and ident.origin is Origin.IMAGE
        assert ident.user == "root" and not ident.family
        host = exec_of(lambda e: e.path == "/usr/bin/sleep")
        assert host.workload_id == "host:node-t"
        announced, _ = pipe.wait_for(WORKLOADS.name, lambda e: isinstance(
            e.payload, Workload) and e.payload.id == web.id)
        assert isinstance(announced.payload, Workload)
        assert (announced.payload.kind, announced.payload.namespace,
                announced.payload.node) == (WorkloadKind.CONTAINER, "demo", "node-t")
        exited, _ = pipe.wait_for(EXEC.name, lambda e: isinstance(e.payload, ExitEvent)
                                  and e.payload.pid == ident.pid)
        assert exited.payload.workload_id == web.id  # type: ignore[union-attr]


def test_collector_to_stream_worker_to_verdict(kafka: KafkaConnection, tmp_path: Path) -> None:
    """The real pipeline on one node: a container exec, sensed by the collector, decided by the
    stream worker, and its verdict back on the node's partition."""
    from schemas import Decision, Verdict
    from schemas.topics import VERDICTS, verdict_partition

    pipe = Pipeline(kafka, tmp_path)
    pipe.start_worker()
    try:
        with running_collector(pipe, "node-e2e", tmp_path), \
                run_container(WORKDIR, "shop", namespace="e2e") as shop:
            shop.exec("sleep", "1")
            verdict, msg = pipe.wait_for(
                VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                and e.payload.workload_id == shop.id and e.payload.name == "sleep"
                and e.payload.pid != shop.init_pid,
                partitions=[verdict_partition("node-e2e", VERDICTS.partitions)])
            decision = verdict.payload
            assert isinstance(decision, Decision)
            # Discover + zero-drift: a runc exec is not family, so it is alerted, not learned.
            assert (decision.group, decision.verdict, decision.reason) == (
                "nv.shop.e2e", Verdict.ALERT, "violation:R6")
            assert msg.key() == b"node-e2e"
    finally:
        pipe.stop_workers()


def test_short_lived_execs_are_reported_from_fanotify(kafka: KafkaConnection,
                                                      tmp_path: Path) -> None:
    """Processes gone before /proc can be read still arrive: the file from fanotify, the
    workload and credentials from the parent, marked partial."""
    pipe = Pipeline(kafka, tmp_path)
    with running_collector(pipe, "node-short", tmp_path, COLLECTOR_REPORT_INTERVAL_S="1"), \
            run_container(WORKDIR, "quick", namespace="short") as quick:
        for _ in range(20):
            subprocess.run(["/bin/true"], check=True)
        # A copied BusyBox named after an applet: a real file the kernel executes, gone at once.
        quick.exec("sh", "-c", "cp /bin/busybox /tmp/true; for i in 1 2 3 4 5; do /tmp/true; "
                               "done; sleep 1")
        time.sleep(2)
        execs = [e.payload for e in pipe.read_all(EXEC.name)
                 if isinstance(e.payload, ExecEvent)]
    host_true = [e for e in execs if e.path == "/usr/bin/true"]
    assert len(host_true) == 20, [(e.path, e.partial) for e in execs]
    assert all(e.workload_id == "host:node-short" for e in host_true)
    # Its totals went out too: what it saw, reported and lost (by reason, never hidden).
    reports = [e.payload for e in pipe.read_all(COLLECTOR_REPORTS.name, settle=1)
               if isinstance(e.payload, CollectorReport) and e.payload.node == "node-short"]
    assert reports and reports[-1].execs >= 25 and reports[-1].reported >= 25
    assert all(n > 0 for n in reports[-1].lost.values())
    in_box = [e for e in execs if e.path == "/tmp/true"]
    assert len(in_box) == 5, [(e.path, e.partial, e.workload_id) for e in execs]
    for e in in_box:
        assert e.workload_id == quick.id and e.origin is Origin.NEW and e.name == "true", e
        if e.partial:  # the parent shell was read: its user and its (non-)family
            assert e.user == "root" and not e.family and e.runtime_injected


_RENAMING_PARENT = """
import ctypes, subprocess, time
first = subprocess.Popen(["/usr/bin/sleep", "1.01"])
time.sleep(1.5)  # the collector has read its parent by now
ctypes.CDLL(None).prctl(15, b"pw-renamed", 0, 0, 0)  # PR_SET_NAME
second = subprocess.Popen(["/usr/bin/sleep", "1.02"])
first.wait(); second.wait()
"""


def test_an_exec_names_its_parent_as_it_is_then(kafka: KafkaConnection, tmp_path: Path) -> None:
    """The collector reads a parent's name once and keeps it until the process connector says
    it changed: a parent renaming itself between two children is named anew."""
    pipe = Pipeline(kafka, tmp_path)
    with running_collector(pipe, "node-rename", tmp_path):
        subprocess.run([sys.executable, "-c", _RENAMING_PARENT], check=True)
        execs = {e.payload.argv: e.payload for e in pipe.read_all(EXEC.name, settle=1)
                 if isinstance(e.payload, ExecEvent) and e.payload.path == "/usr/bin/sleep"}
    first, second = execs[("/usr/bin/sleep", "1.01")], execs[("/usr/bin/sleep", "1.02")]
    assert first.ppid == second.ppid
    assert first.parent_name.startswith("python") and second.parent_name == "pw-renamed"


def test_kafka_away_events_are_spooled_and_arrive_in_order(kafka: KafkaConnection, stack: Stack,
                                                          tmp_path: Path) -> None:
    """Kafka stops twice: once under a running collector (spooled, replayed when it is back),
    once across a collector restart (the spool on disk is replayed by the next run)."""
    pipe = Pipeline(kafka, tmp_path)
    env = {"COLLECTOR_STATE_DIR": str(tmp_path / "state")}
    expected: list[int] = []
    try:
        with running_collector(pipe, "node-spool", tmp_path, **env) as log:
            expected += spawn_true(5)
            time.sleep(1)
            stack.kafka.stop()
            wait_for_line(log, "Kafka is unreachable", timeout=60)
            expected += spawn_true(30)
            time.sleep(1)
            stack.kafka.start(say=lambda m: None)
            wait_for_line(log, "Kafka is back", timeout=90)
            expected += spawn_true(5)
            time.sleep(1)
            # Away again, and the collector stops while it is: the spool waits on disk.
            stack.kafka.stop()
            wait_for_line(log, "Kafka is unreachable", timeout=60,
                          after=log.read_text().rindex("Kafka is back"))
            expected += spawn_true(10)
            time.sleep(1)
    finally:
        stack.kafka.start(say=lambda m: None)
    assert any((tmp_path / "state" / "spool").glob("spool-*.log"))
    with running_collector(pipe, "node-spool", tmp_path, **env) as log:
        wait_for_line(log, "Kafka is back", timeout=90)
    seen = [e.payload.pid for e in pipe.read_all(EXEC.name, settle=3)
            if isinstance(e.payload, ExecEvent) and e.payload.path == "/usr/bin/true"
            and e.payload.workload_id == "host:node-spool"]
    ours = [pid for pid in seen if pid in set(expected)]
    assert sorted(set(ours)) == sorted(expected), (len(ours), len(expected))
    first = {}
    for i, pid in enumerate(ours):
        first.setdefault(pid, i)
    assert sorted(expected, key=first.__getitem__) == expected  # one partition: their order


def test_a_root_escalation_on_the_host_is_detected(kafka: KafkaConnection,
                                                   tmp_path: Path) -> None:
    """A user's process (uid 1000, its parent and grandparent too) turns itself into root
    through a setuid-root program, without sudo: the collector sends the uid-change facts and
    the stream app raises Host.Privilege.Escalation."""
    from schemas import Decision, Incident
    from schemas.topics import SECURITY_EVENTS, VERDICTS

    suid = WORKDIR / f"rootpy-{uuid.uuid4().hex[:8]}"
    WORKDIR.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/python3.11", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    escalate = f"{suid} -c 'import os, time; os.setuid(0); time.sleep(1)'"
    child = f"import subprocess; subprocess.run({escalate!r}, shell=True, check=True)"
    pipe = Pipeline(kafka, tmp_path)
    pipe.start_worker()
    try:
        with running_collector(pipe, "node-esc", tmp_path):
            subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                            "sh", "-c", f"/usr/bin/python3 -c {shlex.quote(child)}"],
                           check=True, timeout=30)
            verdict, _ = pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                                       and e.payload.reason == "escalation")
            found, _ = pipe.wait_for(SECURITY_EVENTS.name, lambda e: isinstance(
                e.payload, Incident) and e.payload.name == "Host.Privilege.Escalation")
    finally:
        pipe.stop_workers()
        suid.unlink(missing_ok=True)
    decision = verdict.payload
    assert isinstance(decision, Decision) and decision.workload_id == "host:node-esc"
    assert decision.verdict is Verdict.ALERT  # nodes is in Discover: reported, not killed
    incident = found.payload
    assert isinstance(incident, Incident)
    # proc_* describe the user's process (the escalated one's parent), proc_parent_* its parent.
    assert incident.proc_real_uid == 1000
    assert {incident.proc_name, incident.proc_parent_name} <= {"sh", "python3"}
    assert incident.message == "Unauthorized root privilege escalation!"


def test_a_missing_topic_is_spooled_until_it_exists(kafka: KafkaConnection,
                                                    tmp_path: Path) -> None:
    """The exec topic is gone (deleted, or not created yet): the collector does not stop. It
    says which topic, spools what it cannot publish, and once the topic exists again delivers
    every exec, in order."""
    pipe = Pipeline(kafka, tmp_path)
    exec_topic = pipe.topic(EXEC.name)
    admin = AdminClient(pipe.kafka.confluent_config())
    for future in admin.delete_topics([exec_topic]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while exec_topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "the topic was not deleted"
        time.sleep(0.2)
    expected: list[int] = []
    with running_collector(pipe, "node-missing", tmp_path,
                           COLLECTOR_STATE_DIR=str(tmp_path / "state")) as log:
        expected += spawn_true(20)
        wait_for_line(log, f"the topic {exec_topic} does not exist: spooling", timeout=60)
        expected += spawn_true(10)
        time.sleep(1)
        assert any((tmp_path / "state" / "spool").glob("spool-*.log"))
        ensure_topics(pipe.kafka, [t for t in ALL_TOPICS if t.name == EXEC.name])
        wait_for_line(log, "the spool is empty, publishing directly", timeout=90)
        expected += spawn_true(5)
        time.sleep(1)
    seen = [e.payload.pid for e in pipe.read_all(EXEC.name, settle=3)
            if isinstance(e.payload, ExecEvent) and e.payload.path == "/usr/bin/true"
            and e.payload.workload_id == "host:node-missing"]
    ours = [pid for pid in seen if pid in set(expected)]
    assert sorted(set(ours)) == sorted(expected), (len(ours), len(expected))
    first: dict[int, int] = {}
    for i, pid in enumerate(ours):
        first.setdefault(pid, i)
    assert sorted(expected, key=first.__getitem__) == expected  # one partition: their order
