"""The process that answers held execs: `python -m collectors.enforcement.exec_answerer`, started
and fed by the collector (`answerer_link.py`).

The kernel holds each exec of a file in a Protect workload's root mount (fanotify
`FAN_OPEN_EXEC_PERM`) until this process answers it: from its cache at once; else it asks the
collector to publish an `exec_check` and waits for the verdict until a bounded timeout, after
which the group's fail mode answers. Held execs are capped per workload
(`max_held_per_workload`, repeats of a held one included): beyond it that workload's next
first-seen execs are answered by `over_budget_mode` (closed by default: the workload flooding is
the attacker), so a container cannot fill the node's holds and push its neighbours into their fail
mode. The node's ceiling (`max_held`, which no one workload can reach) answers by the fail mode,
so the host never hangs on the pipeline. In a zero-drift workload held before exec,
the same loop answers every open of a file in its root mount (`write_guard.py`): a write that
would be drift is denied before it happens.

Why a process of its own: a thread of the collector had to take the GIL from the sensing thread
for every answer, and that thread shares its CPUs with everything on the node. Near the p99 of a
cached answer, most of the time went to that wait (bench/collector.py). Here nothing else runs
Python, and while execs are held the process runs at a real-time priority (`kernel/realtime.py`).

Its wait and its common case, a held exec answered from the cache, are compiled
(`fast_answer.c`): the interpreter waking up cold cost a cached answer more than its work did.
That code reads this object's own tables, laid out as `cache_key.py` says, and builds the key as
`_key_of` does (`cache_key.cache_key`); whatever it does not answer comes back to
`on_permission`. With `fast_answers` off, this code answers everything.

The collector and this process talk over a socket pair, one typed message per datagram
(`answerer_protocol.py`): the collector says how each workload is held (hold, forget), each
verdict asked for, and stop; this process asks for an exec_check per first-seen held exec (ask),
hands over each write it denied (drift), and its counters every METRICS_EVERY_S when they changed
(metrics).

If it dies, its fanotify groups close with it and the kernel lets everything held go ahead; the
collector starts it again and tells it the held workloads anew.
"""

from __future__ import annotations

import bisect
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.enforcement.answerer_protocol import (
    Ask,
    Counts,
    Drift,
    Forget,
    Hold,
    HoldMessage,
    Metrics,
    ProtocolError,
    Stop,
    ToAnswerer,
    ToCollector,
    VerdictMessage,
    decode_to_answerer,
    encode,
)
from collectors.enforcement.cache_key import CacheKey, FastHold, cache_key, fast_hold
from collectors.enforcement.fast_answer import FastAnswerLike, fast_answer
from collectors.enforcement.lineage import Lineage, Placement
from collectors.enforcement.write_guard import WriteGuard
from collectors.kernel.connector import EXIT, FORK, ProcConnector
from collectors.kernel.fanotify import Permission, PermissionGroup, answer_until
from collectors.kernel.procfs import ProcStat, read_cgroup, read_proc, read_stat
from collectors.kernel.realtime import Realtime
from collectors.sensing.sensor import Sensor, exe_origin
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver
from collectors.settings import CollectorSettings
from schemas import FailMode, FileEvent, Origin

__all__ = ["CACHED_BUCKETS", "VERDICT_BUCKETS", "ExecAnswerer", "Hold", "main"]

log = logging.getLogger("procwarden.collector.exec_answerer")

VERDICT_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   5.0)
CACHED_BUCKETS = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005)
METRICS_EVERY_S = 0.25

_NETCATS = ("nc", "ncat", "netcat")
_OVER_BUDGET_REPORTED = 100  # workloads named in the metrics (the most denied first)
_OVER_BUDGET_LOG_S = 10.0  # a workload over its budget is logged at most this often
_BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin")

class _Histogram:
    """Bucket counts (not cumulative) and the sum, as the collector's /metrics shows them."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


@dataclass
class _Metrics:
    answered: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (source, allow)
    placed: Counter[str] = field(default_factory=Counter)  # lineage | proc -> n
    opens: Counter[str] = field(default_factory=Counter)  # allow | deny -> held opens
    remembered: int = 0
    forgotten: int = 0
    held: int = 0
    # first-seen execs answered beyond their workload's held budget, by workload
    over_budget: Counter[str] = field(default_factory=Counter)
    verdict_wait: _Histogram = field(default_factory=lambda: _Histogram(VERDICT_BUCKETS))
    cached_answer: _Histogram = field(default_factory=lambda: _Histogram(CACHED_BUCKETS))

    def snapshot(self) -> dict[str, Any]:
        return {"answered": {f"{source} {'allow' if allow else 'deny'}": n
                             for (source, allow), n in self.answered.items()},
                "placed": dict(self.placed),
                "opens": dict(self.opens),
                "remembered": self.remembered, "forgotten": self.forgotten, "held": self.held,
                "over_budget": dict(self.over_budget.most_common(_OVER_BUDGET_REPORTED)),
                "verdict_wait": [*self.verdict_wait.counts, self.verdict_wait.sum],
                "cached_answer": [*self.cached_answer.counts, self.cached_answer.sum]}


@dataclass
class _Pending:
    key: CacheKey
    deadline: float
    since: float
    events: list[Permission] = field(default_factory=list)


class ExecAnswerer:
    """One per collector, in its own process; single-threaded: nothing here takes a lock."""

    def __init__(self, settings: CollectorSettings, link: socket.socket) -> None:
        self.settings = settings
        self.link = link
        self.fail_open = settings.fail_mode is FailMode.OPEN
        self.resolver = WorkloadResolver(node=settings.node,
                                         max_file_bytes=settings.workload_file_max_bytes)
        self.sensor = Sensor(self.resolver)
        self.metrics = _Metrics()
        self.group: PermissionGroup | None = PermissionGroup()
        self.writes: WriteGuard | None = WriteGuard(self.resolver, self._report_drift)
        self._groups = (self.group, self.writes.group)  # their counts outlive give_up/shutdown
        self.metrics.opens = self.writes.answered
        self._realtime = Realtime(settings.hold_realtime)
        self._holds: dict[str, Hold] = {}
        self._cache: OrderedDict[CacheKey, bool] = OrderedDict()
        self._pending: dict[str, _Pending] = {}  # exec_check event id -> waiting execs
        self._pending_keys: dict[CacheKey, str] = {}
        self._held_by: Counter[str] = Counter()  # workload -> its execs held now
        self._over_budget_said: dict[str, float] = {}
        self._netcats: dict[str, frozenset[str]] = {}
        self._families: dict[tuple[int, int], bool] = {}  # (parent pid, its start) -> family
        self._lineage = Lineage()
        # Workload held before exec -> what the compiled wait needs to build a cache key as
        # `_key_of` does.
        self._fast_holds: dict[str, FastHold] = {}
        self._fast: FastAnswerLike | None = None
        if settings.fast_answers:
            self._fast = fast_answer(self.group.fd, self._lineage, self._fast_holds,
                                     self._cache, CACHED_BUCKETS, settings.kernel_cache)
        self._fast_ignore_said = False
        self._connector: ProcConnector | None = None
        self._no_connector = False
        self._watched: dict[str, str] = {}  # workload whose execs are held -> its root mount
        # Each held exec read and not answered yet (by the id of its event, alive until then):
        # an exec answered twice would answer whichever exec holds its descriptor number next.
        self._unanswered: set[int] = set()
        self._stop = threading.Event()
        self.gave_up = False  # five failures in a row: nothing is held any more
        self._seq = 0
        self._sent_metrics: dict[str, Any] = {}
        self._metrics_due = 0.0

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        group, writes = self.group, self.writes
        assert group is not None and writes is not None
        self.link.setblocking(False)

        def step() -> None:
            if self._watched:
                self._realtime.engage()
            else:
                self._realtime.release()
            connector = self._lineage_source()
            if self._fast is not None:
                # waits, drains the connector and answers cached execs itself, by `_key_of`'s
                # and `on_permission`'s rules; returns what needs this code
                ready, passed, failed = self._fast.wait(
                    -1 if connector is None else connector.fileno(),
                    [writes.fileno(), self.link.fileno()], self._timeout(time.monotonic()))
                if failed:
                    self._connector_failed(OSError(failed, os.strerror(failed)))
                events = [Permission(fd, pid) for fd, pid in passed]
            else:
                # poll, not select: with RLIMIT_NOFILE raised, a descriptor may be past 1024
                poller = select.poll()
                for fd in (group.fd, writes.fileno(), self.link.fileno(),
                           *((connector.fileno(),) if connector is not None else ())):
                    poller.register(fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(self._timeout(time.monotonic()) * 1000)]
                events = group.read() if group.fd in ready else []
                if connector is not None:
                    # after the read: each caller's fork was queued before its exec was held
                    # (and drained while nothing is held too, so the buffer stays small)
                    self._drain(connector)
            for event in events:
                self._unanswered.add(id(event))
            for event in events:
                try:
                    self.on_permission(event)
                except Exception:
                    log.exception("answering a held exec failed: allowing it")
                    self._answer(event, True, "error")
            if writes.fileno() in ready:
                writes.answer_pending()
            if self.link.fileno() in ready:
                self._read_link()
            now = time.monotonic()
            self._expire(now)
            if now >= self._metrics_due:
                self._metrics_due = now + METRICS_EVERY_S
                self._send_metrics()

        def give_up() -> None:
            self.gave_up = True
            self.group = self.writes = None
            self._unanswered.clear()  # the kernel lets them go
            group.close()
            writes.close()

        try:
            answer_until(self._stop, step, "execs", give_up)
        finally:
            self._shut_down()

    def _timeout(self, now: float) -> float:
        due = self._metrics_due
        for pending in self._pending.values():
            due = min(due, pending.deadline)
        return min(max(0.0, due - now), METRICS_EVERY_S)

    def _shut_down(self) -> None:
        for pending in self._pending.values():
            for event in pending.events:
                self._answer(event, self._fails_open(pending.key.workload), "shutdown")
        self._pending.clear()
        self._pending_keys.clear()
        self._held_by.clear()
        self.metrics.held = 0
        if self.group is not None:
            self.group.close()  # anything still held is allowed by the kernel
            self.group = None
        if self.writes is not None:
            self.writes.close()
            self.writes = None
        if self._connector is not None:
            self._connector.close()
            self._connector = None
        self._realtime.release()
        self._send_metrics()

    # -- what the collector says ----------------------------------------------------------------

    def _read_link(self) -> None:
        while True:
            try:
                data = self.link.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("the link to the collector failed: %s", exc)
                data = b""
            if not data:  # the collector is gone: nobody would publish or release anything
                self._stop.set()
                return
            try:
                message = decode_to_answerer(data)
            except ProtocolError as exc:  # the same code sent it: a bug, not an attack
                log.error("refused from the collector: %s", exc)
                continue
            self.on_message(message)

    def on_message(self, message: ToAnswerer) -> None:
        match message:
            case HoldMessage():
                self.set_hold(message.workload, message.hold)
            case VerdictMessage(event_id=event_id, allow=allow, stamp=stamp,
                                any_caller=any_caller):
                self.released(event_id, allow, stamp, any_caller)
            case Forget(workload=workload):
                self.forget(workload)
            case Stop():
                self._stop.set()

    def set_hold(self, workload_id: str, hold: Hold) -> None:
        if self.writes is not None:
            self.writes.guard(workload_id, hold.writes)
        if self._holds.get(workload_id) != hold:
            self._holds[workload_id] = hold
            for key in [k for k in self._cache if k.workload == workload_id]:
                del self._cache[key]
            if self.group is not None:
                # the kernel's answers were given under the old policies too
                try:
                    self.group.forget_remembered()
                    self.metrics.forgotten += 1
                except OSError as exc:
                    log.error("the kernel still allows files remembered under the old "
                              "policies: %s", exc)
        if self.group is None:
            return
        mount = self._watched.get(workload_id)
        if hold.pre_exec and mount is None:
            info = self.resolver.container(workload_id)
            if info is not None and info.init_pid:
                mount = f"/proc/{info.init_pid}/root"
                try:
                    self.group.watch(mount)
                    self._watched[workload_id] = mount
                    log.info("holding execs of %s before they run", workload_id)
                except FileNotFoundError:  # its root process is gone
                    log.info("not holding execs of %s: its container has stopped", workload_id)
                except OSError as exc:
                    log.error("cannot hold execs of %s: %s", workload_id, exc)
        elif not hold.pre_exec and mount is not None:
            self.group.unwatch(mount)
            del self._watched[workload_id]
            log.info("no longer holding execs of %s", workload_id)
        self._fast_holds.pop(workload_id, None)
        info = self.resolver.container(workload_id) if hold.pre_exec else None
        if info is not None and info.init_pid:
            self._fast_holds[workload_id] = fast_hold(hold.stamp, info.upperdir,
                                                      self._netcat_paths(info))

    def forget(self, workload_id: str) -> None:
        self._holds.pop(workload_id, None)
        self._fast_holds.pop(workload_id, None)
        mount = self._watched.pop(workload_id, None)
        if mount is not None and self.group is not None:
            self.group.unwatch(mount)
        if self.writes is not None:
            self.writes.guard(workload_id, False)
        self._netcats.pop(workload_id, None)
        self.resolver.forget(workload_id)

    def released(self, event_id: str, allow: bool, stamp: str, any_caller: bool) -> None:
        pending = self._pending.pop(event_id, None)
        if pending is None:
            return  # answered by the fail mode already, or not ours
        self._pending_keys.pop(pending.key, None)
        self._unhold(pending)
        hold = self._holds.get(pending.key.workload)
        current = hold is not None and hold.stamp == stamp == pending.key.stamp
        if current:
            self._remember(pending.key, allow)
        self.metrics.verdict_wait.observe(time.monotonic() - pending.since)
        remember = current and self._kernel_may_remember(pending.key, allow, any_caller)
        for event in pending.events:
            self._answer(event, allow, "verdict", remember)
        self.metrics.held = len(self._pending)

    # -- held execs -----------------------------------------------------------------------------

    def _lineage_source(self) -> ProcConnector | None:
        """A process connector of this process's own, open while some workload's execs are
        held (it sees every fork and exit of the host; nobody needs them otherwise)."""
        wanted = bool(self._watched) and not self._no_connector
        if wanted and self._connector is None:
            try:
                self._connector = ProcConnector(events=FORK | EXIT)  # all the lineage reads
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
            self._connector_failed(exc)

    def _connector_failed(self, exc: Exception) -> None:
        log.warning("process connector for held execs failed (%r): reading /proc", exc)
        self._lineage.forget()
        self._no_connector = True  # closed by the next step, not opened again

    def on_permission(self, event: Permission) -> None:
        started = time.perf_counter()
        key = self._key_of(event)
        if key is None:
            self._answer(event, True, "not-held")
            return
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._answer(event, cached, "cache", self._kernel_may_remember(key, cached))
            self.metrics.cached_answer.observe(time.perf_counter() - started)
            return
        workload_id = key.workload
        if self._held_by[workload_id] >= self.settings.max_held_per_workload:
            self._over_budget(event, workload_id)
            return
        waiting = self._pending_keys.get(key)
        if waiting is not None:  # the same exec is asked about already: wait with it
            self._pending[waiting].events.append(event)
            self._held_by[workload_id] += 1
            return
        if len(self._pending) >= self.settings.max_held:
            self._answer(event, self._fails_open(workload_id), "overload")
            return
        self._seq += 1
        event_id = f"{self.settings.node}:{time.time_ns()}:held-{os.getpid()}-{self._seq}"
        if not self._send(Ask.held(event_id, event.pid, key)):
            self._answer(event, self._fails_open(workload_id), "overload")
            return
        now = time.monotonic()
        self._pending[event_id] = _Pending(key, now + self.settings.hold_timeout_ms / 1000, now,
                                           [event])
        self._pending_keys[key] = event_id
        self._held_by[workload_id] += 1
        self.metrics.held = len(self._pending)

    def _over_budget(self, event: Permission, workload_id: str) -> None:
        allow = self.settings.over_budget_mode is FailMode.OPEN
        self.metrics.over_budget[workload_id] += 1
        self._answer(event, allow, "over-budget")
        now = time.monotonic()
        if now - self._over_budget_said.get(workload_id, -1e9) >= _OVER_BUDGET_LOG_S:
            self._over_budget_said[workload_id] = now
            if len(self._over_budget_said) > 4096:
                self._over_budget_said.clear()
            log.warning("%s has %d execs held, its held-exec budget: its next first-seen "
                        "execs are %s until verdicts come (%d so far)", workload_id,
                        self._held_by[workload_id], "allowed" if allow else "denied",
                        self.metrics.over_budget[workload_id])

    def _unhold(self, pending: _Pending) -> None:
        """`pending`'s execs are answered: they count against their workload no more."""
        workload_id = pending.key.workload
        left = self._held_by[workload_id] - len(pending.events)
        if left > 0:
            self._held_by[workload_id] = left
        else:
            del self._held_by[workload_id]

    def _key_of(self, event: Permission) -> CacheKey | None:
        """The cache key of a held exec; None when this exec is not held. The caller's
        container and family come from its lineage (`lineage.py`) when its creator
        was placed before, else from /proc; the file's path and origin are read each time."""
        pid = event.pid
        placement = self._lineage.placement(pid) if self._connector is not None else None
        if placement is None:
            placement = self._place(pid)
            if placement is None:
                return None  # gone, or a host process reaching into a container's files
            self.metrics.placed["proc"] += 1
        else:
            self.metrics.placed["lineage"] += 1
        info = self.resolver.container(placement.container)
        if info is None:
            return None
        hold = self._holds.get(info.id)
        if hold is None or not hold.pre_exec:
            return None
        path = event.path()
        origin = exe_origin(info, path, max_digest_bytes=self.settings.origin_digest_max_bytes)
        return cache_key(info.id, hold.stamp, path, placement.family, origin,
                         self._netcat_paths(info))

    def _place(self, pid: int) -> Placement | None:
        """Read where `pid` is from /proc, and remember it and its creator for what they make
        next (the creator only if it is in the same container: a child of `runc exec` is
        moved in from the host)."""
        stat = read_stat(pid)
        cgroup = read_cgroup(pid)
        if stat is None or cgroup is None:
            return None
        info = self.resolver.container_of(cgroup)
        if info is None:
            return None
        placement = Placement(info.id, self._family(pid, stat, info))
        if self._connector is None:
            return placement
        self._lineage.place(pid, placement)
        if pid != info.init_pid:  # else its creator is the runtime, on the host
            creator = read_cgroup(stat.ppid)
            if creator is not None and creator == cgroup:
                # descending from the root exactly when its child (not the root) does
                self._lineage.place(stat.ppid, placement)
        return placement

    def _family(self, pid: int, stat: ProcStat, info: ContainerInfo) -> bool:
        """Whether the caller descends from the container's root process: as its parent does,
        which is usually long-lived (a shell, a server), so that answer is cached."""
        if pid == info.init_pid:
            return True
        parent = read_stat(stat.ppid)
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
        late = [eid for eid, p in self._pending.items() if p.deadline <= now]
        for eid in late:
            pending = self._pending.pop(eid)
            self._pending_keys.pop(pending.key, None)
            self._unhold(pending)
            fails_open = self._fails_open(pending.key.workload)
            for event in pending.events:
                self._answer(event, fails_open, "timeout")
            log.warning("no verdict for %s in %s within %d ms: %s by fail mode",
                        pending.key.path, pending.key.workload, self.settings.hold_timeout_ms,
                        "allowed" if fails_open else "denied")
        if late:
            self.metrics.held = len(self._pending)

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
        image (a write to it makes the kernel forget it). The key's policies are current."""
        return (allow and self.settings.kernel_cache and (not key.injected or any_caller)
                and key.origin is Origin.IMAGE)

    def _answer(self, event: Permission, allow: bool, source: str,
                remember: bool = False) -> None:
        group = self.group
        if group is None:
            return  # the group was closed: the kernel let the exec go ahead
        if id(event) not in self._unanswered:
            log.error("an exec was to be answered twice (%s): the first answer stands", source)
            return
        self._unanswered.discard(id(event))
        try:
            if group.answer(event, allow, remember):
                self.metrics.remembered += 1
        except OSError as exc:
            log.warning("answering a held exec failed: %s", exc)
        self.metrics.answered[source, allow] += 1

    # -- what goes to the collector ---------------------------------------------------------------

    def _send(self, message: ToCollector) -> bool:
        """Never blocks (held execs wait on this process); False when the collector cannot
        take it now or is gone."""
        try:
            self.link.send(encode(message))
        except BlockingIOError:
            log.warning("the collector is not reading what this process sends")
            return False
        except OSError:
            self._stop.set()
            return False
        return True

    def _add_fast_counts(self, snapshot: dict[str, Any]) -> None:
        """What the compiled wait answered itself, counted as this code counts it."""
        assert self._fast is not None
        fast = self._fast.counts()
        answered = snapshot["answered"]
        for name, label in (("allowed", "cache allow"), ("denied", "cache deny")):
            if fast[name]:
                answered[label] = answered.get(label, 0) + fast[name]
        compiled = snapshot["compiled"] = fast["allowed"] + fast["denied"]
        if compiled:  # each placed by the lineage
            snapshot["placed"]["lineage"] = snapshot["placed"].get("lineage", 0) + compiled
        snapshot["remembered"] += fast["remembered"]
        for count in ("read_errors", "overflows"):
            snapshot[count] = snapshot.get(count, 0) + fast[count]
        snapshot["cached_answer"] = [a + b for a, b in zip(
            snapshot["cached_answer"], fast["cached_answer"], strict=True)]
        if fast["ignore_errno"] and not self._fast_ignore_said:
            self._fast_ignore_said = True
            log.warning("the kernel cannot answer for files (said once): %s",
                        os.strerror(fast["ignore_errno"]))

    def _report_drift(self, write: FileEvent) -> None:
        self._send(Drift(write))

    def _send_metrics(self) -> None:
        snapshot = self.metrics.snapshot()
        snapshot["read_errors"] = sum(group.read_errors for group in self._groups)
        snapshot["overflows"] = sum(group.overflows for group in self._groups)
        if self._fast is not None:
            self._add_fast_counts(snapshot)
        if snapshot != self._sent_metrics and self._send(Metrics(Counts(**snapshot))):
            self._sent_metrics = snapshot


def main(argv: list[str] | None = None) -> int:
    """`python -m collectors.enforcement.exec_answerer FD SETTINGS_JSON`: FD is this end of the
    socket pair."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    settings = CollectorSettings.model_validate_json(args[1])
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group: the collector says when to stop, after it has
    # stopped needing answers (its SIGTERM is the same: it tells this process in turn).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    link = socket.socket(fileno=int(args[0]))
    try:
        answerer = ExecAnswerer(settings, link)
    except OSError as exc:
        log.error("cannot hold execs: %s", exc)
        return 1
    answerer.run()
    return 1 if answerer.gave_up else 0


if __name__ == "__main__":
    sys.exit(main())
