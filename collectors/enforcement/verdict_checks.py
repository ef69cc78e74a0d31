"""What the collector checks of a verdict before it kills or releases anything (issue 22).

Anyone who can produce to the verdicts topic could once make a collector SIGKILL any process of
its node. Whatever a verdict's signature, it is acted on only when:

- it answers an event this collector published recently (`RecentEvents`: event id -> kind,
  workload, pid, start time, bounded in size and age), with the same kind, workload, pid and
  start time; a release (`exec_check`) names an exec this collector holds;
- a kill has a start time (0 would skip the pid-reuse check), and never aims at pid 1, the
  collector, its exec answerer or any of their ancestors;
- the process is in the verdict's workload now (its cgroup resolves to it; `host:` workloads:
  to no container), read through the pidfd the kill goes through;
- it was not acted on already (`ActedOn`, bounded): a replay of a signed verdict is refused,
  as one past its signature's expiry is.

A `HoldSettings` record (whether execs and writes are held), or the same settings carried by a
decision, is taken only for a workload of this node and only signed (unsigned, when unsigned
verdicts are accepted, only if it holds no less: `only_tightens`). Each refusal is counted
(`procwarden_collector_verdicts_refused_total{reason}`) and logged once per reason and source a
minute (`RefusalLog`); none raises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter

from collectors.kernel.procfs import read_stat
from collectors.sensing.workloads import (
    WorkloadResolver,
    container_id_from_cgroup,
    host_workload_id,
)
from schemas import Decision, EventKind, FailMode

__all__ = ["REFUSED", "ActedOn", "HoldState", "Published", "RecentEvents", "RefusalLog",
           "check_kill", "check_release", "only_tightens", "protected_pids", "workload_of_pid"]

log = logging.getLogger("procwarden.collector.verdicts")

REFUSED = Counter("procwarden_collector_verdicts_refused_total",
                  "Verdicts the collector would not act on, by reason", ["reason"])
FORGOTTEN = Counter("procwarden_collector_verdict_events_forgotten_total",
                    "Published events forgotten before their verdict came, the map being full")

_LOG_EVERY_S = 60.0
_LOG_KEYS = 1024  # (reason, source) pairs remembered for the once-a-minute logging
_SOURCE_CHARS = 80
_ANCESTRY = 64  # ppid links followed at most (a loop in /proc is not possible, a bound is cheap)


@dataclass(frozen=True, slots=True)
class Published:
    kind: EventKind
    workload_id: str
    pid: int
    start_time: int
    at: float  # monotonic


class RecentEvents:
    """The events this collector published that a verdict may answer, oldest first; bounded
    by count (the oldest forgotten, counted) and by age. Thread-safe: written by whoever
    publishes, read by the verdict reader."""

    def __init__(self, max_entries: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        self._events: OrderedDict[str, Published] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, event_id: str, kind: EventKind, workload_id: str, pid: int,
                 start_time: int) -> None:
        now = self._clock()
        with self._lock:
            self._events[event_id] = Published(kind, workload_id, pid, start_time, now)
            self._events.move_to_end(event_id)
            self._expire(now)
            while len(self._events) > self.max_entries:
                self._events.popitem(last=False)
                FORGOTTEN.inc()

    def _expire(self, now: float) -> None:
        while self._events:
            oldest = next(iter(self._events.values()))
            if now - oldest.at <= self.max_age_s:
                break
            self._events.popitem(last=False)

    def get(self, event_id: str) -> Published | None:
        with self._lock:
            self._expire(self._clock())
            return self._events.get(event_id)

    def pop(self, event_id: str) -> Published | None:
        with self._lock:
            return self._events.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._events)


class ActedOn:
    """The verdicts carried out, by the event they answered: bounded, oldest forgotten (by
    then its event has aged out of `RecentEvents` or its process is gone)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, EventKind], None] = OrderedDict()

    def add(self, event_id: str, kind: EventKind) -> None:
        self._seen[(event_id, kind)] = None
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def __contains__(self, item: tuple[str, EventKind]) -> bool:
        return item in self._seen


class RefusalLog:
    """Counts every refusal; logs each (reason, source) once a minute, with how many were
    refused meanwhile. Bounded: beyond _LOG_KEYS sources a minute, one line says so and the
    rest are only counted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._full_since = -1e9
        self._lock = threading.Lock()

    def refuse(self, reason: str, what: str, source: str = "") -> None:
        REFUSED.labels(reason).inc()
        source = source[:_SOURCE_CHARS]
        now = self._clock()
        with self._lock:
            last = self._last.get((reason, source))
            if last is not None and now - last[0] < _LOG_EVERY_S:
                self._last[(reason, source)] = (last[0], last[1] + 1)
                return
            if last is None and len(self._last) >= _LOG_KEYS:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < _LOG_EVERY_S}
                if len(self._last) >= _LOG_KEYS:  # a flood of made-up sources: counted only
                    if now - self._full_since < _LOG_EVERY_S:
                        return
                    self._full_since = now
                    log.warning("verdicts refused from more than %d sources this minute: "
                                "the others are counted, not logged", _LOG_KEYS)
                    return
            self._last[(reason, source)] = (now, 0)
        since = f" ({last[1]} more since the last such line)" if last and last[1] else ""
        log.warning("verdict refused (%s)%s: %s%s", reason,
                    f" from {source!r}" if source else "", what[:300], since)


def protected_pids(pids: Iterable[int | None]) -> set[int]:
    """pid 1 and each of `pids` (the collector, its answerer) with all their ancestors: no
    verdict may signal them."""
    out = {1}
    for start in pids:
        pid, hops = start, 0
        while pid and pid not in out and hops < _ANCESTRY:
            out.add(pid)
            stat = read_stat(pid)
            pid = stat.ppid if stat is not None else 0
            hops += 1
    return out


def workload_of_pid(pid: int, resolver: WorkloadResolver) -> str | None:
    """The workload `pid` is in now, as the collector tags its events; None if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            cgroup = fh.read(64 * 1024)
    except OSError:
        return None
    cid = container_id_from_cgroup(cgroup)
    if cid is not None and resolver.container(cid) is not None:
        return cid
    return host_workload_id(resolver.node)


def check_kill(d: Decision, recent: RecentEvents, acted: ActedOn,
               protected: Callable[[], set[int]]) -> str | None:
    """Why a block verdict may not kill (None: it may, once its process is checked to be in
    its workload)."""
    if not d.start_time:
        return "start_time_zero"
    if d.pid in protected():
        return "protected_pid"
    if (d.event_id, d.event_kind) in acted:
        return "replayed"
    event = recent.get(d.event_id)
    if event is None:
        return "unknown_event"
    if (event.kind, event.workload_id, event.pid, event.start_time) != (
            d.event_kind, d.workload_id, d.pid, d.start_time):
        return "event_mismatch"
    return None


def check_release(d: Decision, recent: RecentEvents, acted: ActedOn) -> str | None:
    """Why an `exec_check` verdict may not answer a held exec."""
    if (d.event_id, d.event_kind) in acted:
        return "replayed"
    event = recent.get(d.event_id)
    if event is None or event.kind is not EventKind.EXEC_CHECK:
        return "no_hold"
    if event.workload_id != d.workload_id or (d.pid and d.pid != event.pid):
        return "event_mismatch"
    return None


@dataclass(frozen=True, slots=True)
class HoldState:
    """What hold settings set (collectors.enforcement.exec_answerer.Hold's fields, without its
    import here)."""

    pre_exec: bool
    pre_write: bool
    fail_mode: FailMode


def only_tightens(old: HoldState, new: HoldState) -> bool:
    """Whether `new` holds at least what `old` did: what unsigned hold settings may say when
    unsigned verdicts are accepted (mixed-version rollouts)."""
    return (new.pre_exec >= old.pre_exec and new.pre_write >= old.pre_write
            and not (old.fail_mode is FailMode.CLOSED and new.fail_mode is FailMode.OPEN))
