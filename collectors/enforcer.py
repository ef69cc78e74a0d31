"""Verdicts back on the node: kill what was blocked after exec, answer held execs before it.

Two threads. The verdict thread reads only this node's partition of the verdicts topic: a `block`
for an exec, a reverse shell or an escalation kills the process (through a pidfd, after checking
its start time, so a reused pid is never hit); an `exec_check` answer releases the held exec it
names; a `policy` message says whether the workload's execs are held before they run, and its
stamp invalidates the answers cached under the previous policies; in a zero-drift workload held
before exec, writes that would be drift are denied before they happen too (`write_guard`).

The permission thread answers the kernel's held execs (fanotify `FAN_OPEN_EXEC_PERM` on the root
mounts of held workloads): from the cache at once, else it publishes an `exec_check` and waits
for the verdict until a bounded timeout, after which the fail mode answers. The number of held
execs is capped; beyond it the fail mode answers too, so the host never hangs on the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from collectors import gil_held_io
from collectors.connector import ProcConnector
from collectors.fanotify import Permission, PermissionGroup, answer_until
from collectors.lineage import Lineage, Placement
from collectors.procfs import ProcStat, parse_stat, read_proc, read_stat
from collectors.sensing import Sensor, exe_origin
from collectors.settings import CollectorSettings
from collectors.shared_cpu import SharedCpu
from collectors.workloads import ContainerInfo, WorkloadResolver
from collectors.write_guard import WriteGuard
from schemas import (
    Decision,
    DecodeError,
    EventKind,
    ExecCheck,
    FailMode,
    Origin,
    Payload,
    Verdict,
    decode_envelope,
)
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, VERDICTS, verdict_partition

__all__ = ["Enforcer", "kill_if_same"]

log = logging.getLogger("procwarden.collector.enforcer")

ENFORCED = Counter("procwarden_collector_enforced_total",
                   "Block verdicts acted on after exec, by outcome", ["outcome"])
PRE_EXEC = Counter("procwarden_collector_pre_exec_total",
                   "Held execs answered, by how and what", ["source", "answer"])
HELD = Gauge("procwarden_collector_held_execs", "Execs held now, waiting for a verdict")
VERDICT_SECONDS = Histogram(
    "procwarden_collector_verdict_wait_seconds", "From holding an exec to its verdict",
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
CACHED_SECONDS = Histogram(
    "procwarden_collector_cached_answer_seconds",
    "From taking up a held exec to answering it from the cache (the collector's own share of "
    "the added latency)",
    buckets=(0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005))
REMEMBERED = Counter("procwarden_collector_kernel_remembered_total",
                     "Files whose later execs the kernel allows unheld, until a policy change")
FORGOTTEN = Counter("procwarden_collector_kernel_forgotten_total",
                    "Policy changes after which every file the kernel remembered is held again")
PLACED = Counter("procwarden_collector_held_placed_total",
                 "Held execs by how their container and family were known: from the lineage "
                 "the process connector told (no read), or read from /proc", ["by"])
_BY_LINEAGE, _BY_PROC = PLACED.labels("lineage"), PLACED.labels("proc")

_KILLED_KINDS = frozenset({EventKind.EXEC, EventKind.STDIO, EventKind.UID_CHANGE})
_NETCATS = ("nc", "ncat", "netcat")
_BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin")

# Everything pre_exec_decide reads from the collector, plus the policies it was answered under.
CacheKey = tuple[str, str, str, bool, Origin, bool]  # workload, stamp, path, injected, origin, nc


def kill_if_same(pid: int, start_time: int) -> str:
    """SIGKILL the process `pid` only while it is the one that started at `start_time`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        # The pidfd pins this very process: a check through it cannot race a pid reuse.
        stat = read_stat(pid)
        if stat is None:
            return "gone"
        if start_time and stat.start_time != start_time:
            return "pid-reused"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return "killed"
    except ProcessLookupError:
        return "gone"
    finally:
        os.close(pidfd)


def _stat_keeping_gil(pid: int) -> ProcStat | None:
    text = gil_held_io.read_small(f"/proc/{pid}/stat")
    return None if text is None else parse_stat(text.decode(errors="replace"))


@dataclass
class _Hold:
    pre_exec: bool
    stamp: str
    writes: bool = False  # drift writes denied before they happen (zero-drift, held)
    fail_mode: FailMode | None = None  # the group's; None: this collector's setting
    mount: str = ""  # the watched root mount, while held


@dataclass
class _Pending:
    key: CacheKey
    deadline: float
    since: float
    events: list[Permission] = field(default_factory=list)


class Enforcer:
    def __init__(self, settings: CollectorSettings, kafka: KafkaConnection,
                 resolver: WorkloadResolver, sensor: Sensor,
                 publish: Callable[[str, str, Payload], str]) -> None:
        self.settings = settings
        self.kafka = kafka
        self.resolver = resolver
        self.sensor = sensor
        self.publish = publish
        self.node = settings.node
        self.fail_open = settings.fail_mode is FailMode.OPEN
        self._holds: dict[str, _Hold] = {}
        self._cache: OrderedDict[CacheKey, bool] = OrderedDict()
        self._pending: dict[str, _Pending] = {}  # exec_check event id -> waiting execs
        self._pending_keys: dict[CacheKey, str] = {}
        self._netcats: dict[str, frozenset[str]] = {}
        self._families: dict[tuple[int, int], bool] = {}  # (parent pid, its start) -> family
        self._lineage = Lineage()  # the permission thread's alone
        self._connector: ProcConnector | None = None
        self._no_connector = False
        self._mounts = 0  # workloads whose execs are held now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.group: PermissionGroup | None = None
        self._cpu: SharedCpu | None = None
        self.writes: WriteGuard | None = None
        self.assigned = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Called by the sensing thread."""
        if not self.settings.dry_run:
            self._cpu = SharedCpu(self.settings.hold_cpu)
            self.group = PermissionGroup()
            self._spawn(self._permission_loop, "exec-permissions")
            self.writes = WriteGuard(self.resolver, self.publish)
            self.writes.start()
        self._restore_holds()
        self._spawn(self._verdict_loop, "verdicts")

    @property
    def _holds_file(self) -> Path:
        return self.settings.state_dir / "holds.json"

    def _restore_holds(self) -> None:
        """Held workloads stay held across a restart: no window opens while the verdicts
        that said so are behind the committed offset."""
        try:
            saved = json.loads(self._holds_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._holds_file, exc)
            return
        for workload_id, (pre_exec, stamp, *rest) in saved.items():
            if self.resolver.container(workload_id) is not None:
                writes = bool(rest and rest[0])
                fail_mode = FailMode(rest[1]) if len(rest) > 1 and rest[1] else None
                self._set_hold(workload_id, bool(pre_exec), str(stamp), writes, fail_mode)

    def _save_holds(self) -> None:
        state = {wid: [h.pre_exec, h.stamp, h.writes, h.fail_mode.value if h.fail_mode else ""]
                 for wid, h in self._holds.items()}
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._holds_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._holds_file)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        if self.group is not None:
            with self._lock:
                for pending in self._pending.values():
                    for event in pending.events:
                        self._answer(event, self._fails_open(pending.key[0]), "shutdown")
                self._pending.clear()
                self._pending_keys.clear()
            self.group.close()  # anything still held is allowed by the kernel
        if self.writes is not None:
            self.writes.stop()

    def holds(self, workload_id: str) -> bool:
        hold = self._holds.get(workload_id)
        return hold is not None and bool(hold.mount)

    # -- verdicts -------------------------------------------------------------------------------

    def _verdict_loop(self) -> None:
        consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": f"procwarden-collector-{self.node}",
            "enable.auto.commit": True, "enable.auto.offset.store": False,
            "auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
        topic = self.kafka.topic(VERDICTS.name)
        try:
            partitions = self._partition_count(consumer, topic)
            if partitions == 0:
                return  # stopping
            partition = verdict_partition(self.node, partitions)
            consumer.assign([TopicPartition(topic, partition, OFFSET_STORED)])
            self.assigned.set()
            log.info("reading verdicts from %s[%d]", topic, partition)
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("verdicts: %s", error)
                    continue
                try:
                    env = decode_envelope(msg.value() or b"")
                except DecodeError as exc:
                    log.warning("verdicts[%d]@%d: not a verdict: %s", msg.partition(),
                                msg.offset(), exc)
                else:
                    if isinstance(env.payload, Decision) and env.payload.node == self.node:
                        self.on_verdict(env.payload)
                consumer.store_offsets(msg)
        except Exception:
            log.exception("the verdict reader stopped")
            raise
        finally:
            consumer.close()

    def _partition_count(self, consumer: Consumer, topic: str) -> int:
        """The verdict topic's partitions; a topic created a moment ago may list none yet."""
        warned = False
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            except KafkaException as exc:
                meta = None
                log.warning("verdicts: %s", exc)
            if meta is not None and meta.error is None and meta.partitions:
                return len(meta.partitions)
            if not warned:
                log.warning("waiting for the topic %s", topic)
                warned = True
            self._stop.wait(1.0)
        return 0

    def on_verdict(self, d: Decision) -> None:
        kind = d.event_kind
        if kind is EventKind.POLICY or (d.workload_id not in self._holds and d.policy_stamp):
            # (the second: any verdict tells the policy state again after our restart)
            self._set_hold(d.workload_id, d.pre_exec, d.policy_stamp, d.pre_write, d.fail_mode)
        if kind is EventKind.EXEC_CHECK:
            self._released(d)
        elif d.verdict is Verdict.BLOCK and kind in _KILLED_KINDS:
            self._kill(d)

    def _kill(self, d: Decision) -> None:
        if self.settings.dry_run:
            outcome = "dry-run"
        else:
            outcome = kill_if_same(d.pid, d.start_time)
        ENFORCED.labels(outcome).inc()
        log.warning("block %s: pid %d (%s, %s) in %s: %s", d.reason, d.pid, d.name, d.path,
                    d.workload_id, outcome)

    def _set_hold(self, workload_id: str, pre_exec: bool, stamp: str, writes: bool,
                  fail_mode: FailMode | None) -> None:
        with self._lock:
            hold = self._holds.get(workload_id)
            if hold is None:
                hold = self._holds[workload_id] = _Hold(not pre_exec, "")
            now = (pre_exec, stamp, writes, fail_mode)
            if (hold.pre_exec, hold.stamp, hold.writes, hold.fail_mode) != now:
                for key in [k for k in self._cache if k[0] == workload_id]:
                    del self._cache[key]
                hold.pre_exec, hold.stamp, hold.writes, hold.fail_mode = now
                self._save_holds()
                if self.group is not None:
                    # the kernel's answers were given under the old policies too
                    try:
                        self.group.forget_remembered()
                        FORGOTTEN.inc()
                    except OSError as exc:
                        log.error("the kernel still allows files remembered under the old "
                                  "policies: %s", exc)
            if self.writes is not None:
                self.writes.guard(workload_id, writes)
            if self.group is None:
                return
            if pre_exec and not hold.mount:
                info = self.resolver.container(workload_id)
                if info is not None and info.init_pid:
                    mount = f"/proc/{info.init_pid}/root"
                    try:
                        self.group.watch(mount)
                        hold.mount = mount
                        self._mounts += 1
                        log.info("holding execs of %s before they run", workload_id)
                    except FileNotFoundError:  # its root process is gone
                        log.info("not holding execs of %s: its container has stopped",
                                 workload_id)
                    except OSError as exc:
                        log.error("cannot hold execs of %s: %s", workload_id, exc)
            elif not pre_exec and hold.mount:
                self.group.unwatch(hold.mount)
                hold.mount = ""
                self._mounts -= 1
                log.info("no longer holding execs of %s", workload_id)

    def forget(self, workload_id: str) -> None:
        with self._lock:
            hold = self._holds.pop(workload_id, None)
            if hold is not None and hold.mount and self.group is not None:
                self.group.unwatch(hold.mount)
                self._mounts -= 1
            if self.writes is not None:
                self.writes.guard(workload_id, False)
            self._netcats.pop(workload_id, None)
            if hold is not None:
                self._save_holds()

    def _released(self, d: Decision) -> None:
        allow = d.verdict is not Verdict.BLOCK or self.settings.dry_run
        with self._lock:
            pending = self._pending.pop(d.event_id, None)
            if pending is None:
                return  # answered by the fail mode already, or not ours
            self._pending_keys.pop(pending.key, None)
            hold = self._holds.get(pending.key[0])
            current = hold is not None and hold.stamp == d.policy_stamp == pending.key[1]
            if current:
                self._remember(pending.key, allow)
            VERDICT_SECONDS.observe(time.monotonic() - pending.since)
            remember = current and self._kernel_may_remember(pending.key, allow, d.any_caller)
            for event in pending.events:
                self._answer(event, allow, "verdict", remember)
            HELD.set(len(self._pending))
        if not allow:
            log.warning("denied before exec: %s in %s (%s)", d.path, d.workload_id, d.reason)

    # -- held execs -----------------------------------------------------------------------------

    def _permission_loop(self) -> None:
        group, cpu = self.group, self._cpu
        assert group is not None and cpu is not None

        def step() -> None:
            if self._mounts:
                cpu.engage()
            else:
                cpu.release()
            connector = self._lineage_source()
            watched = [group.fd] if connector is None else [group.fd, connector.fileno()]
            ready, _, _ = select.select(watched, [], [], 0.01)
            events = group.read() if group.fd in ready else []
            if connector is not None:
                # after the read: each caller's fork was queued before its exec was held
                # (and drained while nothing is held too, so the buffer stays small)
                self._drain(connector)
            for event in events:
                try:
                    self.on_permission(event)
                except Exception:
                    log.exception("answering a held exec failed: allowing it")
                    self._answer_safely(event, True, "error")
            self._expire(time.monotonic())

        def give_up() -> None:
            with self._lock:
                self.group = None
                group.close()

        try:
            answer_until(self._stop, step, "execs", give_up)
        finally:
            cpu.release()
            if self._connector is not None:
                self._connector.close()
                self._connector = None

    def _lineage_source(self) -> ProcConnector | None:
        """The permission thread's own process connector, open while some workload's execs
        are held (it sees every fork and exit of the host; nobody needs them otherwise)."""
        wanted = self._mounts > 0 and not self._no_connector
        if wanted and self._connector is None:
            try:
                self._connector = ProcConnector(keep_gil=True)
            except OSError as exc:
                log.warning("no process connector for held execs (%s): each is read from "
                            "/proc", exc)
                self._no_connector = True
        elif not wanted and self._connector is not None:
            self._connector.close()
            self._connector = None
            self._lineage.forget()
        return self._connector

    def _drain(self, connector: ProcConnector) -> None:
        """Feed the lineage everything queued. Never raises: a held exec waits on what
        follows, and a connector that fails only means reading /proc."""
        if self._no_connector:
            return
        try:
            while True:
                overruns = connector.overruns
                self._lineage.feed(connector.read())
                if connector.overruns > overruns:
                    self._lineage.forget()  # messages were lost: read /proc until placed again
                if connector.drained:
                    return
        except Exception as exc:
            log.warning("process connector for held execs failed (%r): reading /proc", exc)
            self._lineage.forget()
            self._no_connector = True  # closed by the next step, not opened again

    def on_permission(self, event: Permission) -> None:
        started = time.perf_counter()
        held = self._key_of(event)
        if held is None:
            self._answer_safely(event, True, "not-held")
            return
        key, info = held
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._answer(event, cached, "cache", self._kernel_may_remember(key, cached))
                CACHED_SECONDS.observe(time.perf_counter() - started)
                return
            waiting = self._pending_keys.get(key)
            if waiting is not None:  # the same exec is asked about already: wait with it
                self._pending[waiting].events.append(event)
                return
            if len(self._pending) >= self.settings.max_held:
                self._answer(event, self._fails_open(key[0]), "overload")
                return
        event_id = self.publish(EXEC.name, key[0], self._question(event.pid, key, info))
        now = time.monotonic()
        with self._lock:
            self._pending[event_id] = _Pending(key, now + self.settings.hold_timeout_ms / 1000,
                                               now, [event])
            self._pending_keys[key] = event_id
            HELD.set(len(self._pending))

    def _key_of(self, event: Permission) -> tuple[CacheKey, ContainerInfo] | None:
        """The cache key of a held exec; None when this exec is not held. The caller's
        container and family come from its lineage (`collectors/lineage.py`) when its creator
        was placed before, else from /proc; the file's path and origin are read each time,
        while keeping the GIL (`gil_held_io`): every held exec waits on this."""
        pid = event.pid
        placement = self._lineage.placement(pid) if self._connector is not None else None
        if placement is None:
            placement = self._place(pid)
            if placement is None:
                return None  # gone, or a host process reaching into a container's files
            _BY_PROC.inc()
        else:
            _BY_LINEAGE.inc()
        info = self.resolver.container(placement.container)
        if info is None:
            return None
        hold = self._holds.get(info.id)
        if hold is None or not hold.pre_exec:
            return None
        path = event.path()
        key = (info.id, hold.stamp, path, not placement.family, exe_origin(info, path),
               path in self._netcat_paths(info))
        return key, info

    def _place(self, pid: int) -> Placement | None:
        """Read where `pid` is from /proc, and remember it and its creator for what they make
        next (the creator only if it is in the same container: a child of `runc exec` is
        moved in from the host)."""
        stat = _stat_keeping_gil(pid)
        cgroup = gil_held_io.read_small(f"/proc/{pid}/cgroup")
        if stat is None or cgroup is None:
            return None
        info = self.resolver.container_of(cgroup.decode(errors="replace"))
        if info is None:
            return None
        placement = Placement(info.id, self._family(pid, stat, info))
        if self._connector is None:
            return placement
        self._lineage.place(pid, placement)
        if pid != info.init_pid:  # else its creator is the runtime, on the host
            creator = gil_held_io.read_small(f"/proc/{stat.ppid}/cgroup")
            if creator is not None and creator == cgroup:
                # descending from the root exactly when its child (not the root) does
                self._lineage.place(stat.ppid, placement)
        return placement

    def _question(self, pid: int, key: CacheKey, info: ContainerInfo) -> ExecCheck:
        workload_id, _, path, injected, origin, netcat = key
        proc = read_proc(pid)
        euid = proc.euid if proc is not None else 0
        return ExecCheck(workload_id=workload_id, pid=pid, path=path,
                         start_time=proc.start_time if proc is not None else 0, euid=euid,
                         user=self.resolver.user_name(info, euid),
                         name=proc.comm if proc is not None else path.rsplit("/", 1)[-1][:15],
                         runtime_injected=injected, origin=origin, netcat=netcat)

    def _family(self, pid: int, stat: ProcStat, info: ContainerInfo) -> bool:
        """Whether the caller descends from the container's root process: as its parent does,
        which is usually long-lived (a shell, a server), so that answer is cached."""
        if pid == info.init_pid:
            return True
        parent = _stat_keeping_gil(stat.ppid)
        if parent is None:
            proc = read_proc(pid)
            return proc is not None and self.sensor.is_family(proc, info)
        key = (stat.ppid, parent.start_time)
        known = self._families.get(key)
        if known is None:
            proc = read_proc(pid)
            known = proc is not None and self.sensor.is_family(proc, info)
            self._families[key] = known
            if len(self._families) > 4096:
                self._families.pop(next(iter(self._families)))
        return known

    def _netcat_paths(self, info: ContainerInfo) -> frozenset[str]:
        known = self._netcats.get(info.id)
        if known is None:
            root = Path(f"/proc/{info.init_pid}/root")
            found = set()
            for folder in _BIN_DIRS:
                for name in _NETCATS:
                    link = root / folder / name
                    try:
                        target = os.readlink(link)
                    except OSError:
                        if link.exists():
                            found.add(f"/{folder}/{name}")
                        continue
                    found.add(target if target.startswith("/") else f"/{folder}/{target}")
            known = self._netcats[info.id] = frozenset(found)
        return known

    def _remember(self, key: CacheKey, allow: bool) -> None:
        self._cache[key] = allow
        if len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)

    def _expire(self, now: float) -> None:
        with self._lock:
            late = [eid for eid, p in self._pending.items() if p.deadline <= now]
            for eid in late:
                pending = self._pending.pop(eid)
                self._pending_keys.pop(pending.key, None)
                fails_open = self._fails_open(pending.key[0])
                for event in pending.events:
                    self._answer(event, fails_open, "timeout")
                log.warning("no verdict for %s in %s within %d ms: %s by fail mode",
                            pending.key[2], pending.key[0], self.settings.hold_timeout_ms,
                            "allowed" if fails_open else "denied")
            if late:
                HELD.set(len(self._pending))

    def _fails_open(self, workload_id: str) -> bool:
        """The workload's group's fail mode, else this collector's."""
        hold = self._holds.get(workload_id)
        if hold is None or hold.fail_mode is None:
            return self.fail_open
        return hold.fail_mode is FailMode.OPEN

    def _kernel_may_remember(self, key: CacheKey, allow: bool, any_caller: bool = False
                             ) -> bool:
        """Whether the kernel may allow this file's later execs itself, whoever makes them:
        allowed for a process of the container's own, or for any caller as its verdict says (a
        runtime-injected one is allowed before exec whatever the file), and a file from the
        image (a write to it makes the kernel forget it). Called under the lock, with the
        key's policies current."""
        _, _, _, injected, origin, _ = key
        return (allow and self.settings.kernel_cache and (not injected or any_caller)
                and origin is Origin.IMAGE)

    def _answer(self, event: Permission, allow: bool, source: str,
                remember: bool = False) -> None:
        group = self.group
        if group is None:
            return  # the group was closed: the kernel let the exec go ahead
        try:
            if group.answer(event, allow, remember):
                REMEMBERED.inc()
        except OSError as exc:
            log.warning("answering a held exec failed: %s", exc)
        PRE_EXEC.labels(source, "allow" if allow else "deny").inc()

    def _answer_safely(self, event: Permission, allow: bool, source: str) -> None:
        with self._lock:
            self._answer(event, allow, source)
