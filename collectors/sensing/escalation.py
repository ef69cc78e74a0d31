"""Root-escalation facts (docs/behaviour.md §9.3): a process whose real uid became 0, checked
100 ms later.

The process connector reports each uid change. Only a change to real uid 0 away from a non-root
parent can be an escalation, so only those are followed: 100 ms later the process, its parent
and its grandparent are read, with what the engine needs to judge (the workload's UID_MIN, the
parent user's groups, sudo among the ancestors), and a `uid_change` event is published.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from collectors.kernel.procfs import DEFAULT_LIMITS, ArgvLimits, ProcInfo, read_proc, read_stat
from collectors.sensing.container_files import DEFAULT_MAX_BYTES, read_container_file
from collectors.sensing.sensor import cap_path, count_cuts
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver
from schemas import UidChangeEvent

__all__ = ["EscalationWatch"]

_DELAY_S = 0.1


@dataclass(order=True)
class _Due:
    at: float
    pid: int = field(compare=False)
    start_time: int = field(compare=False)


def _file(info: ContainerInfo | None, path: str, max_bytes: int) -> str | None:
    """A file of the workload's root (the node's: pid 1's), read safely: `container_files`."""
    pid, where = (info.init_pid, info.id) if info is not None else (1, "the node")
    data = read_container_file(pid, path, max_bytes=max_bytes, where=where)
    return None if data is None else data.decode(errors="replace")


def uid_min(info: ContainerInfo | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    text = _file(info, "etc/login.defs", max_bytes)
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
            return int(parts[1])
    return 1000


def groups_of(info: ContainerInfo | None, user: str, uid: int, *,
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, ...]:
    """The user's groups in the workload: its primary group and every group listing it."""
    primary_gid = None
    for line in (_file(info, "etc/passwd", max_bytes) or "").splitlines():
        parts = line.split(":")
        if len(parts) > 3 and parts[2] == str(uid):
            primary_gid = parts[3]
            break
    found = []
    for line in (_file(info, "etc/group", max_bytes) or "").splitlines():
        parts = line.split(":")
        if len(parts) < 4:
            continue
        if parts[2] == primary_gid or user in parts[3].split(","):
            found.append(parts[0])
    return tuple(found)


def _sudo_in_ancestry(proc: ProcInfo) -> bool:
    """`sudo` as the process-group leader, the session leader or one of 10 ancestors."""
    leaders = {proc.pgid, proc.sid} - {0, proc.pid}
    for pid in leaders:
        leader = read_proc(pid)
        if leader is not None and leader.comm == "sudo":
            return True
    current: ProcInfo | None = proc
    for _ in range(11):
        if current is None or current.ppid <= 0:
            return False
        current = read_proc(current.ppid)
        if current is not None and current.comm == "sudo":
            return True
    return False


class EscalationWatch:
    def __init__(self, resolver: WorkloadResolver, limits: ArgvLimits = DEFAULT_LIMITS) -> None:
        self.resolver = resolver
        self.limits = limits  # argv and paths bounded, masked and capped as an exec's
        self._due: list[_Due] = []

    def on_uid_change(self, pid: int, ruid: int, now: float | None = None) -> None:
        if ruid != 0:
            return  # only a change to real uid 0 can be an escalation
        stat = read_stat(pid)
        if stat is None:
            return
        now = time.monotonic() if now is None else now
        heapq.heappush(self._due, _Due(now + _DELAY_S, pid, stat.start_time))

    def next_due(self) -> float | None:
        return self._due[0].at if self._due else None

    def run_due(self, now: float | None = None) -> list[UidChangeEvent]:
        now = time.monotonic() if now is None else now
        found = []
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            event = self._facts(due)
            if event is not None:
                found.append(event)
        return found

    def _facts(self, due: _Due) -> UidChangeEvent | None:
        proc = read_proc(due.pid, limits=self.limits)
        if proc is None or proc.start_time != due.start_time:
            return None  # gone within 100 ms: nothing left to judge or stop
        parent = read_proc(proc.ppid, limits=self.limits)
        if parent is None or parent.ruid == 0:
            return None  # a root parent: not an escalation
        grandparent = read_proc(parent.ppid) if parent.ppid > 0 else None
        info = self.resolver.container_of(proc.cgroup)
        workload = self.resolver.workload(info)
        parent_user = self.resolver.user_name(info, parent.ruid)
        max_path = self.limits.max_path_bytes
        path, path_cut = cap_path(proc.exe, max_path)
        return UidChangeEvent(
            workload_id=workload.id, pid=proc.pid, ruid=proc.ruid, euid=proc.euid,
            name=proc.comm, path=path, start_time=proc.start_time,
            parent_name=parent.comm, parent_path=cap_path(parent.exe, max_path)[0],
            parent_ruid=parent.ruid,
            parent_euid=parent.euid, parent_user=parent_user,
            parent_argv0=parent.argv[0] if parent.argv else "",
            parent_groups=groups_of(info, parent_user, parent.ruid,
                                    max_bytes=self.resolver.max_file_bytes),
            grandparent_name=grandparent.comm if grandparent else "",
            grandparent_path=cap_path(grandparent.exe, max_path)[0] if grandparent else "",
            grandparent_ruid=grandparent.ruid if grandparent else None,
            uid_min=uid_min(info, max_bytes=self.resolver.max_file_bytes),
            sudo_in_ancestry=_sudo_in_ancestry(proc),
            persisted=proc.ruid != parent.ruid, argv=proc.argv,
            argv_truncated=count_cuts(proc.truncated, path_cut))
