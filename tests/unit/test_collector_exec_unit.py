"""The collector's reconciliation of the process connector's fork/exec/exit stream with what
/proc and fanotify tell, over a recorded stream (a hand-written list of `ProcEvent`s), a fake
/proc for running processes, a fake fanotify group and a list publisher: no kernel connector,
no Kafka.

An exec is reported once, with its workload announced before it; its exit follows it; a pid
reused is a new process; an exec whose /proc entry is gone is reported from its fanotify
notice (the parent from the recorded fork) or counted as lost with its reason."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from collectors.agent import Collector
from collectors.kernel.connector import EXEC, EXIT, FORK, ProcEvent
from collectors.kernel.fanotify import ExecNotice
from collectors.kernel.procfs import ProcInfo
from collectors.sensing.sensor import Sensed, Sensor
from collectors.settings import CollectorSettings
from schemas import Envelope, ExecEvent, ExitEvent, Workload, WorkloadKind, decode_envelope
from schemas.connections import KafkaConnection
from schemas.topics import EXEC as EXEC_TOPIC
from schemas.topics import WORKLOADS
from transport.signing import Keyring

NODE = "node-u"
WEB = Workload(id="c-web", kind=WorkloadKind.CONTAINER, node=NODE, name="web", namespace="demo",
               service="web", image="busybox")
API = Workload(id="c-api", kind=WorkloadKind.CONTAINER, node=NODE, name="api", namespace="demo",
               service="api", image="busybox")
# Above the kernel's largest pid_max (2**22): /proc can never have these.
NEVER = 2**22 + 11


class FakeProc(Sensor):
    """The /proc edge: processes that run (pid -> what reading /proc would give) are answered
    from `running`; any other pid is read from the real /proc (where `NEVER` pids are gone)."""

    def __init__(self, real: Sensor) -> None:
        super().__init__(real.resolver, real.limits)
        self.running: dict[int, Sensed] = {}
        self.forgotten: list[int] = []

    def start(self, pid: int, workload: Workload, path: str, *, start_time: int = 1,
              ppid: int = 1, argv: tuple[str, ...] = ()) -> None:
        name = path.rsplit("/", 1)[-1]
        argv = argv or (name,)
        event = ExecEvent(workload_id=workload.id, pid=pid, path=path, name=name, argv=argv,
                          ppid=ppid, start_time=start_time)
        proc = ProcInfo(pid=pid, ppid=ppid, pgid=pid, sid=pid, start_time=start_time,
                        comm=name, exe=path, argv=argv, ruid=0, euid=0, pid_ns="", cgroup="")
        self.running[pid] = Sensed(workload, event, proc)

    def stop(self, pid: int) -> None:
        self.running.pop(pid, None)

    def sense_exec(self, pid: int, *, with_hash: bool = False) -> Sensed | None:
        if pid in self.running:
            return self.running[pid]
        return super().sense_exec(pid, with_hash=with_hash)

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)
        super().forget(pid)


class FakeNotifier:
    """fanotify's exec notices: what `queue` holds is read at the collector's next read."""

    def __init__(self) -> None:
        self.queue: list[ExecNotice] = []
        self.overflows = 0

    def read(self) -> list[ExecNotice]:
        out, self.queue = self.queue, []
        return out

    def watch_filesystem(self, path: str) -> None: ...


class ListPublisher:
    """The collector's Kafka edge: what it is handed, in order; `full` refuses (spool full)."""

    class _Spool:
        size = 0

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.full = False
        self.spool = self._Spool()
        self.signer = None

    def send(self, topic: str, key: bytes, value: bytes) -> bool:
        if self.full:
            return False
        self.sent.append((topic, key, value))
        return True

    def close(self) -> None: ...

    def records(self, topic: str = EXEC_TOPIC.name) -> list[Any]:
        return [decode_envelope(v).payload for t, _, v in self.sent if t == topic]

    def envelopes(self) -> list[tuple[str, str, Envelope]]:
        return [(t, k.decode(), decode_envelope(v)) for t, k, v in self.sent]


@pytest.fixture
def collector(tmp_path: Path) -> Iterable[Collector]:
    settings = CollectorSettings(state_dir=tmp_path, node=NODE, enforce=False,
                                 file_events=False)
    c = Collector(KafkaConnection(bootstrap_servers="127.0.0.1:9"), settings,
                  keys=Keyring.generate().node_keys(NODE))
    c.publisher.close()
    c.publisher = ListPublisher()  # type: ignore[assignment]
    c.sensor = FakeProc(c.sensor)
    yield c


def play(c: Collector, events: Iterable[ProcEvent]) -> None:
    for ev in events:
        c.handle(ev)


def fork(child: int, parent: int) -> ProcEvent:
    return ProcEvent(FORK, child, child, parent)


def exec_(pid: int) -> ProcEvent:
    return ProcEvent(EXEC, pid, pid)


def exit_(pid: int, tid: int | None = None) -> ProcEvent:
    return ProcEvent(EXIT, tid if tid is not None else pid, pid)


def described(records: list[Any]) -> list[tuple[str, str, int]]:
    return [(type(r).__name__, r.workload_id, r.pid) for r in records]


def lost(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_lost_total", {"reason": reason}) or 0.0


def test_fork_exec_exit_reports_the_workload_then_its_exec_then_its_exit(
        collector: Collector) -> None:
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    proc.start(100, WEB, "/bin/ls")
    play(collector, [fork(100, 1), exec_(100), exit_(100)])
    assert [(t, k) for t, k, _ in out.envelopes()] == [
        (WORKLOADS.name, WEB.id), (EXEC_TOPIC.name, WEB.id), (EXEC_TOPIC.name, WEB.id)]
    assert described(out.records()) == [("ExecEvent", WEB.id, 100), ("ExitEvent", WEB.id, 100)]
    assert (collector.execs, collector.reported, dict(collector.lost)) == (1, 1, {})
    # every envelope this collector makes says its node, with an id of its own
    envs = [e for _, _, e in out.envelopes()]
    assert {e.node for e in envs} == {NODE} and len({e.event_id for e in envs}) == 3


def test_a_workload_is_announced_once_however_many_execs_it_has(collector: Collector) -> None:
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    for pid in (200, 201, 202):
        proc.start(pid, WEB, f"/bin/p{pid}")
    proc.start(300, API, "/bin/api")
    play(collector, [exec_(200), exec_(300), exec_(201), exec_(202)])
    assert [p.id for p in out.records(WORKLOADS.name)] == [WEB.id, API.id]
    assert described(out.records()) == [("ExecEvent", WEB.id, 200), ("ExecEvent", API.id, 300),
                                        ("ExecEvent", WEB.id, 201), ("ExecEvent", WEB.id, 202)]


def test_a_threads_fork_and_exit_are_not_its_processes(collector: Collector) -> None:
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    proc.start(400, WEB, "/usr/bin/server")
    play(collector, [exec_(400),
                     ProcEvent(FORK, 401, 400, 400),  # a thread of 400
                     exit_(400, tid=401)])  # that thread ends: 400 still runs
    assert described(out.records()) == [("ExecEvent", WEB.id, 400)]
    play(collector, [exit_(400)])
    assert described(out.records())[-1] == ("ExitEvent", WEB.id, 400)


def test_an_exit_of_a_process_never_reported_publishes_nothing(collector: Collector) -> None:
    out = collector.publisher
    assert isinstance(out, ListPublisher)
    play(collector, [fork(500, 1), exit_(500)])
    assert out.sent == []


def test_a_second_exec_event_of_the_same_program_read_is_reported_once(
        collector: Collector) -> None:
    # A quick second exec reads /proc after it: the first event's read already showed it.
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    proc.start(600, WEB, "/bin/sh")
    play(collector, [exec_(600), exec_(600)])
    assert described(out.records()) == [("ExecEvent", WEB.id, 600)]
    assert collector.execs == 2 and collector.reported == 1
    # the same pid exec'ing another program is a new exec
    proc.start(600, WEB, "/bin/cat")
    play(collector, [exec_(600)])
    assert [r.path for r in out.records()] == ["/bin/sh", "/bin/cat"]


def test_a_pid_reused_is_a_new_process_of_its_own_workload(collector: Collector) -> None:
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    proc.start(700, WEB, "/bin/true", start_time=10)
    play(collector, [fork(700, 1), exec_(700), exit_(700)])
    proc.stop(700)
    # the kernel gives 700 to a new process: the same program, a later start
    proc.start(700, WEB, "/bin/true", start_time=99)
    play(collector, [fork(700, 1), exec_(700)])
    # and then to a process of another workload
    play(collector, [exit_(700)])
    proc.start(700, API, "/bin/api", start_time=150)
    play(collector, [fork(700, 1), exec_(700), exit_(700)])
    assert described(out.records()) == [
        ("ExecEvent", WEB.id, 700), ("ExitEvent", WEB.id, 700),
        ("ExecEvent", WEB.id, 700), ("ExitEvent", WEB.id, 700),
        ("ExecEvent", API.id, 700), ("ExitEvent", API.id, 700)]
    assert [r.start_time for r in out.records() if isinstance(r, ExecEvent)] == [10, 99, 150]
    assert 700 in collector.sensor.forgotten


def test_a_pid_reused_after_its_exit_was_lost_is_still_a_new_process(
        collector: Collector) -> None:
    # An overrun of the connector's socket loses the exit: only the start time tells the
    # process that now has the pid from the one that had it.
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    proc.start(750, WEB, "/bin/true", start_time=10)
    play(collector, [exec_(750)])
    proc.start(750, WEB, "/bin/true", start_time=11)
    play(collector, [exec_(750)])
    assert [r.start_time for r in out.records()] == [10, 11]


def test_an_exec_gone_from_proc_without_fanotify_is_lost_as_process_gone(
        collector: Collector) -> None:
    out = collector.publisher
    assert isinstance(out, ListPublisher) and collector.notifier is None
    before = lost("process_gone")
    play(collector, [fork(NEVER, 1), exec_(NEVER), exit_(NEVER)])  # real /proc: never there
    assert out.sent == []
    assert dict(collector.lost) == {"process_gone": 1} and collector.execs == 1
    assert lost("process_gone") == before + 1


def test_an_exec_gone_from_proc_is_told_by_its_notice_with_its_forks_parent(
        collector: Collector) -> None:
    out, notifier = collector.publisher, FakeNotifier()
    assert isinstance(out, ListPublisher)
    collector.notifier = notifier
    parent = os.getpid()  # a parent that runs: the gone child's credentials come from it
    notifier.queue.append(ExecNotice(pid=NEVER, path="/usr/bin/short", dev=0, ino=1))
    play(collector, [fork(NEVER, parent), exec_(NEVER), exit_(NEVER)])
    records = out.records()
    assert [type(r) for r in records] == [ExecEvent, ExitEvent]
    event = records[0]
    assert (event.pid, event.path, event.name, event.partial) == (NEVER, "/usr/bin/short",
                                                                  "short", True)
    assert event.ppid == parent and records[1].workload_id == event.workload_id
    assert dict(collector.lost) == {} and collector.reported == 1


def test_an_exit_that_overtakes_the_notice_is_reported_after_the_exec(
        collector: Collector) -> None:
    proc, out, notifier = collector.sensor, collector.publisher, FakeNotifier()
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    collector.notifier = notifier
    play(collector, [fork(NEVER, 1), exec_(NEVER), exit_(NEVER)])
    assert out.sent == []  # its notice is still on its way: nothing to say yet
    # the notice comes in behind a burst; the next gone exec's read of notices brings it
    notifier.queue += [ExecNotice(pid=NEVER, path="/bin/quick", dev=0, ino=2),
                       ExecNotice(pid=NEVER + 1, path="/bin/next", dev=0, ino=3)]
    play(collector, [exec_(NEVER + 1)])
    assert [(type(r).__name__, r.pid) for r in out.records()] == [
        ("ExecEvent", NEVER), ("ExitEvent", NEVER), ("ExecEvent", NEVER + 1)]
    assert [r.path for r in out.records() if isinstance(r, ExecEvent)] == ["/bin/quick",
                                                                         "/bin/next"]


def test_a_gone_busybox_applet_is_lost_as_applet_unknown(collector: Collector) -> None:
    out, notifier = collector.publisher, FakeNotifier()
    assert isinstance(out, ListPublisher)
    collector.notifier = notifier
    before = lost("applet_unknown")
    notifier.queue.append(ExecNotice(pid=NEVER, path="/bin/busybox", dev=0, ino=3))
    play(collector, [exec_(NEVER)])
    assert out.sent == [] and dict(collector.lost) == {"applet_unknown": 1}
    assert lost("applet_unknown") == before + 1


def test_a_record_the_spool_cannot_take_is_lost_as_spool_full(collector: Collector) -> None:
    proc, out = collector.sensor, collector.publisher
    assert isinstance(proc, FakeProc) and isinstance(out, ListPublisher)
    out.full = True
    proc.start(900, WEB, "/bin/ls")
    play(collector, [exec_(900)])
    assert dict(collector.lost) == {"spool_full": 2}  # the announcement and the exec
