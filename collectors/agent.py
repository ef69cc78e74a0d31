"""The node agent: the Linux process connector in, exec events out to Kafka, verdicts enforced.

Each exec the kernel reports is enriched from /proc (a process gone before we look is counted,
never hidden), tagged with its workload, and published keyed by workload id so per-workload order
holds. A workload is announced on `procwarden.workloads` the first time one of its processes is
seen. Exits are published for processes whose exec was. New processes' stdio is inspected for
reverse shells. The enforcer (collectors/enforcement/enforcer.py) acts on this node's verdicts.
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from collectors.enforcement.answerer_link import ANSWERER_METRICS
from collectors.enforcement.enforcer import Enforcer, node_keys
from collectors.kernel.connector import COMM, EXIT, FORK, UID, ProcConnector, ProcEvent
from collectors.kernel.connector import EXEC as EXEC_EVENT
from collectors.kernel.fanotify import ExecNotice, NotificationGroup
from collectors.kernel.procfs import ArgvLimits
from collectors.publishing.publisher import Publisher
from collectors.publishing.state_files import private_folder
from collectors.sensing.escalation import EscalationWatch
from collectors.sensing.file_watch import FileWatch
from collectors.sensing.reverse_shell import StdioInspector
from collectors.sensing.sensor import Sensed, Sensor, is_loader
from collectors.sensing.workloads import WorkloadResolver
from collectors.settings import CollectorSettings
from schemas import CollectorReport, Envelope, ExitEvent, Payload, Workload, WorkloadState, encode
from schemas.connections import KafkaConnection
from schemas.records import replace
from schemas.topics import COLLECTOR_REPORTS, EXEC, FILE, WORKLOADS
from transport import Health, exit_unless_stopped
from transport.keyfile import KeyFile, keys_now
from transport.signing import NodeKeys, Signer

__all__ = ["CannotGoOn", "Collector"]

log = logging.getLogger("procwarden.collector")

EVENTS = Counter("procwarden_collector_events_total", "Process events seen", ["kind"])
LOST = Counter("procwarden_collector_lost_total", "Events that could not be reported",
               ["reason"])
# Children looked up once: a labels() lookup per event cost more than the count itself.
_EXECS_SEEN, _EXITS_SEEN, _EXECS_FROM_NOTICES = (
    EVENTS.labels("exec"), EVENTS.labels("exit"), EVENTS.labels("exec_from_notice"))


_SENSING = "sensing"


class CannotGoOn(RuntimeError):
    """A part of the collector stopped for good (the verdict reader, the exec answerer): the
    collector exits non-zero rather than run on while it enforces nothing."""


@dataclass
class Collector:
    kafka: KafkaConnection
    settings: CollectorSettings = field(default_factory=CollectorSettings)
    health: Health = field(default_factory=lambda: Health("collector"))
    # What it signs its records with and checks verdicts by; None: COLLECTOR_SIGNING_KEYS_FILE
    # or the local keyring (collectors.enforcement.enforcer.node_keys). A KeyFile is followed as
    # it rotates.
    keys: NodeKeys | KeyFile[NodeKeys] | None = None
    resolver: WorkloadResolver = field(init=False)
    sensor: Sensor = field(init=False)
    enforcer: Enforcer | None = field(init=False, default=None)
    _announced: dict[str, Workload] = field(default_factory=dict)
    _reported: dict[int, str] = field(default_factory=dict)  # pid -> workload id
    _roots: dict[int, Workload] = field(default_factory=dict)  # container root pid -> workload
    _last_exec: dict[int, tuple[int, str, tuple[str, ...]]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    # For execs whose process is gone before /proc is read: who forked each process, the files
    # fanotify saw each pid execute, and the execs waiting for their fanotify notice.
    _parents: OrderedDict[int, int] = field(default_factory=OrderedDict)
    _notices: dict[int, deque[tuple[float, ExecNotice]]] = field(default_factory=dict)
    _gone: dict[int, tuple[float, int | None, bool]] = field(default_factory=dict)  # since,
    # parent, exited
    notifier: NotificationGroup | None = field(init=False, default=None)
    # Running totals for the collector reports (the metrics say the same to Prometheus).
    started_at: float = field(default_factory=time.time)
    execs: int = 0
    reported: int = 0
    lost: collections.Counter[str] = field(default_factory=collections.Counter)
    _next_report: float = 0.0
    _files: dict[str, FileWatch] = field(default_factory=dict)  # container -> its file events
    _poller: select.epoll | None = None  # the sensing loop's sources, while it runs
    _cannot_go_on: str = ""  # set (from any thread) when a part stopped for good

    def __post_init__(self) -> None:
        self.node = self.settings.node
        if self.keys is None:
            self.keys = node_keys(self.settings)
        limits = ArgvLimits.of(self.settings)
        self.resolver = WorkloadResolver(node=self.node,
                                         max_file_bytes=self.settings.workload_file_max_bytes,
                                         argv_limits=limits)
        self.sensor = Sensor(self.resolver, limits,
                             origin_digest_max_bytes=self.settings.origin_digest_max_bytes)
        self.stdio = StdioInspector(self.settings.stdio_inspections,
                                    self.settings.stdio_interval_s)
        self.escalations = EscalationWatch(self.resolver, self.sensor.limits)
        if self.settings.enforce:
            self.enforcer = Enforcer(self.settings, self.kafka, self.resolver, self.publish,
                                     health=self.health, cannot_go_on=self._stop_for,
                                     keys=self.keys)
        private_folder(self.settings.state_dir)  # which workloads are held, the spool
        self.publisher = Publisher(self.kafka, self.settings.state_dir / "spool",
                                   self.settings.spool_max_bytes, lose=self._lose,
                                   signer=Signer.for_node(keys_now(self.keys, self._new_keys)))

    def _new_keys(self, keys: NodeKeys) -> None:
        self.publisher.signer = Signer.for_node(keys)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        # A first-seen held exec waits while its question (the answerer link's thread) and its
        # verdict (the verdict thread) wait for the GIL: hand it over after 50 us, not 5 ms, or
        # a busy sensing loop adds milliseconds to each. (Only a waiting thread asks for it:
        # the exec rate of the sensing alone did not change at 50 us.)
        sys.setswitchinterval(0.00005)
        self.health.needs(_SENSING)
        self.health.start_heartbeat()
        try:
            # what `handle` reads; the host's session, group and ptrace changes stay unsent
            connector = ProcConnector(events=FORK | EXEC_EVENT | UID | COMM | EXIT)
        except OSError as exc:
            raise RuntimeError(f"the process connector did not start ({exc}): is this root?"
                               ) from exc
        self._start_notifier()
        if self.enforcer is not None:
            self.enforcer.start()
        # One epoll set, kept up to date as file watches come and go: select() built its fd
        # lists and called each source's fileno() on every wake-up, several per exec.
        poller = self._poller = select.epoll()
        poller.register(connector.fileno(), select.EPOLLIN)
        if self.notifier is not None:
            poller.register(self.notifier.fileno(), select.EPOLLIN)
        conn_fd = connector.fileno()
        notice_fd = self.notifier.fileno() if self.notifier is not None else -1
        overruns = 0
        next_due = 0.0  # when the stdio and escalation checks next have work (monotonic)
        self.health.part(_SENSING)
        try:
            while not should_stop():
                if self._cannot_go_on:
                    raise CannotGoOn(self._cannot_go_on)
                now = time.monotonic()
                ready = dict(poller.poll(min(0.2, max(0.0, next_due - now))))
                # Process events before exec notices, as they happened: a gone exec's notice
                # is read when its exec event comes (_on_exec).
                if conn_fd in ready:
                    events = connector.read()
                    if connector.overruns > overruns:
                        # before these events: what the lost ones would have told is unknown
                        self.sensor.forget_all()
                        self._lose("connector_overrun", connector.overruns - overruns)
                        log.warning("process connector overrun: events were lost")
                        overruns = connector.overruns
                    for event in events:
                        self.handle(event)
                if notice_fd in ready:
                    self._read_notices()
                if len(ready) > (conn_fd in ready) + (notice_fd in ready):
                    for watch in list(self._files.values()):
                        if watch.fileno() in ready:
                            self._read_files(watch)
                now = time.monotonic()
                if self._gone:
                    self._expire_gone(now)
                if now >= next_due:
                    for found in self.stdio.run_due(now):
                        self.publish(EXEC.name, found.workload_id, found)
                    for change in self.escalations.run_due(now):
                        self.publish(EXEC.name, change.workload_id, change)
                    if now >= self._next_report:
                        self._next_report = now + self.settings.report_interval_s
                        self.report()
                next_due = min(self._next_report, now + 0.2)
                for due in (self.stdio.next_due(), self.escalations.next_due()):
                    if due is not None and due < next_due:
                        next_due = due
                self.publisher.poll()
        finally:
            self.health.part(_SENSING, "stopped")
            if self.enforcer is not None:
                self.enforcer.stop()
            if self.notifier is not None:
                self.notifier.close()
            for watch in self._files.values():
                watch.close()
            self._poller = None
            poller.close()
            connector.close()
            self.report()
            self.publisher.close()
            self.health.stop()

    def _stop_for(self, why: str) -> None:
        if not self._cannot_go_on:
            log.critical("cannot go on: %s", why)
            self._cannot_go_on = why
            exit_unless_stopped(f"cannot go on: {why}", grace_s=60.0)

    def _lose(self, reason: str, n: int = 1) -> None:
        LOST.labels(reason).inc(n)
        self.lost[reason] += n

    def report(self) -> None:
        """Publish this collector's totals (every COLLECTOR_REPORT_INTERVAL_S, and at exit)."""
        self.publish(COLLECTOR_REPORTS.name, self.node, CollectorReport(
            node=self.node, started_at=self.started_at, execs=self.execs,
            reported=self.reported, lost=dict(self.lost),
            spool_bytes=self.publisher.spool.size,
            dead_letters=self.enforcer.dead_letters if self.enforcer is not None else 0,
            held_over_budget=ANSWERER_METRICS.over_budget()))

    def _start_notifier(self) -> None:
        """fanotify exec notifications on every real filesystem of the host (container roots
        are added when their containers are first seen): the path of an exec survives its
        process."""
        try:
            self.notifier = NotificationGroup(unwanted=is_loader)
        except OSError as exc:
            log.warning("no fanotify exec notifications (%s): short-lived execs will be lost",
                        exc)
            return
        for mount in _real_mounts():
            try:
                self.notifier.watch_filesystem(mount)
            except OSError as exc:
                log.debug("no exec notifications for %s: %s", mount, exc)

    def _read_notices(self) -> None:
        assert self.notifier is not None
        overflows = self.notifier.overflows
        for notice in self.notifier.read():
            self._on_notice(notice)
        if self.notifier.overflows > overflows:
            self._lose("fanotify_overflow")

    def handle(self, ev: ProcEvent) -> None:
        what = ev.what
        if what == FORK:
            if ev.pid == ev.tgid:  # a new process, not a thread
                self._parents[ev.tgid] = ev.a
                if len(self._parents) > 200_000:
                    self._parents.popitem(last=False)
        elif what == UID:
            self.sensor.forget(ev.tgid)
            self.escalations.on_uid_change(ev.tgid, ev.a)
        elif what == COMM:
            if ev.pid == ev.tgid:  # (a thread's own name is not its process's)
                self.sensor.forget(ev.tgid)
        elif what == EXEC_EVENT:
            _EXECS_SEEN.inc()
            self.execs += 1
            self.sensor.forget(ev.tgid)
            self._on_exec(ev.tgid)
        elif what == EXIT:
            if ev.pid != ev.tgid:
                return  # a thread, not the process
            pid = ev.tgid
            self.sensor.forget(pid)
            _EXITS_SEEN.inc()
            self._last_exec.pop(pid, None)
            self._parents.pop(pid, None)
            gone = self._gone.get(pid)
            if gone is not None:  # its exit overtook its notice: report both in order later
                self._gone[pid] = (gone[0], gone[1], True)
                return
            workload_id = self._reported.pop(pid, None)
            if workload_id is not None:
                self.publish(EXEC.name, workload_id, ExitEvent(workload_id, pid))
            stopped = self._roots.pop(pid, None)
            if stopped is not None:
                self._stopped(stopped)

    def _watch_files(self, workload: Workload) -> None:
        if not self.settings.file_events or workload.id in self._files:
            return
        info = self.resolver.container(workload.id)
        if info is None:
            return
        try:
            watch = FileWatch(workload.id, info)
        except OSError as exc:
            log.warning("no file events for %s (%s): drift is judged at exec only",
                        workload.id, exc)
            return
        self._files[workload.id] = watch
        if self._poller is not None:
            self._poller.register(watch.fileno(), select.EPOLLIN)

    def _read_files(self, watch: FileWatch) -> None:
        overflows = watch.overflows
        for event in watch.read():
            self.publish(FILE.name, watch.workload_id, event)
        if watch.overflows > overflows:
            self._lose("fanotify_overflow", watch.overflows - overflows)

    def _stopped(self, workload: Workload) -> None:
        """A container's root process exited: the container is gone."""
        watch = self._files.pop(workload.id, None)
        if watch is not None:
            if self._poller is not None:
                self._poller.unregister(watch.fileno())
            watch.close()
        self._announced.pop(workload.id, None)
        self.resolver.forget(workload.id)
        if self.enforcer is not None:
            self.enforcer.forget(workload.id)
        self.publish(WORKLOADS.name, workload.id,
                     replace(workload, state=WorkloadState.STOPPED))

    def _on_exec(self, pid: int) -> None:
        sensed = self.sensor.sense_exec(pid, with_hash=self.settings.with_hash)
        if sensed is None:
            if self.notifier is None:
                self._lose("process_gone")
                return
            self._gone[pid] = (time.monotonic(), self._parents.get(pid), False)
            # Its notice was queued when it opened its file, before this exec event was sent:
            # read it now, so this exec is reported before the execs that came after it.
            self._read_notices()
            self._resolve_gone(pid)
            return
        self._notices.pop(pid, None)  # /proc told us more than a notice can
        seen = (sensed.proc.start_time, sensed.event.path, sensed.event.argv)
        if self._last_exec.get(pid) == seen:
            return  # a quick second exec read /proc after it: it was reported already
        self._last_exec[pid] = seen
        self._report(sensed)

    def _on_notice(self, notice: ExecNotice) -> None:
        last = self._last_exec.get(notice.pid)
        if notice.pid not in self._gone and last is not None and last[1] == notice.path:
            return  # a late notice of an exec /proc already told us about
        now = time.monotonic()
        self._notices.setdefault(notice.pid, deque()).append((now, notice))
        if notice.pid in self._gone:
            self._resolve_gone(notice.pid)

    def _resolve_gone(self, pid: int) -> None:
        """Report a gone process's exec from its fanotify notice, once the notice is here."""
        notices = self._notices.get(pid)
        if not notices or pid not in self._gone:
            return  # the notice may still be on its way (_expire_gone waits a little), or the
            # exec was resolved already
        _, notice = notices.popleft()
        if not notices:
            del self._notices[pid]
        _, parent, exited = self._gone.pop(pid)
        sensed = self.sensor.sense_gone(pid, notice.path, notice.dev, parent)
        if sensed is None:
            self._lose("applet_unknown")  # BusyBox: the applet died with the process
            return
        _EXECS_FROM_NOTICES.inc()
        self._report(sensed)
        if exited:
            self._reported.pop(pid, None)
            self.publish(EXEC.name, sensed.workload.id, ExitEvent(sensed.workload.id, pid))

    def _expire_gone(self, now: float) -> None:
        for pid, (since, _, _) in list(self._gone.items()):
            if now - since > 2.0:  # its notice may queue behind a burst
                del self._gone[pid]
                self._lose("process_gone")
        if len(self._notices) > 10_000:  # notices nobody asked for: execs /proc already told
            for pid in [p for p, q in self._notices.items() if now - q[-1][0] > 5]:
                del self._notices[pid]

    def _report(self, sensed: Sensed) -> None:
        workload = sensed.workload
        if self._announced.get(workload.id) != workload:
            self._announced[workload.id] = workload
            if workload.root_pid:
                self._roots[workload.root_pid] = workload
                self._watch_root(workload.root_pid)
                self._watch_files(workload)
            self.publish(WORKLOADS.name, workload.id, workload)
        self._reported[sensed.event.pid] = workload.id
        self.publish(EXEC.name, workload.id, sensed.event)
        self.reported += 1
        if not sensed.event.partial:
            self.stdio.watch(sensed.event)

    def _watch_root(self, root_pid: int) -> None:
        if self.notifier is not None:
            try:
                self.notifier.watch_filesystem(f"/proc/{root_pid}/root")
            except OSError as exc:
                log.debug("no exec notifications in the container of %d: %s", root_pid, exc)

    def publish(self, topic: str, key: str, payload: Payload, event_id: str | None = None
                ) -> str:
        """Publish one record (from any thread); returns its event id (made here unless
        given: the exec answerer names its questions itself)."""
        if event_id is None:
            event_id = f"{self.node}:{time.time_ns()}:{next(self._seq)}"
        env = Envelope.wrap(payload, event_id=event_id, node=self.node, ts=time.time(),
                            cluster=self.settings.cluster)
        if self.enforcer is not None:  # before it can be answered
            self.enforcer.published(event_id, payload)
        if not self.publisher.send(self.kafka.topic(topic), key.encode(), encode(env)):
            self._lose("spool_full")
        return event_id


# Filesystems that hold no programs, or cannot be watched.
_PSEUDO = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs",
                     "tracefs", "securityfs", "pstore", "bpf", "autofs", "hugetlbfs",
                     "configfs", "fusectl", "binfmt_misc", "nsfs", "rpc_pipefs", "efivarfs"})


def _real_mounts() -> list[str]:
    """One mount point per filesystem of this mount namespace that can hold executables."""
    seen: set[str] = set()
    mounts = []
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ["/"]
    for line in lines:
        fields = line.split()
        try:
            fstype = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        if fstype in _PSEUDO or fields[2] in seen:  # fields[2]: the device (major:minor)
            continue
        seen.add(fields[2])
        mounts.append(fields[4].replace("\\040", " "))
    return mounts
