"""From a pid to an exec event: /proc facts, its workload, family, image origin, users."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from collectors.procfs import ProcInfo, read_proc
from collectors.workloads import ContainerInfo, WorkloadResolver
from schemas import ExecEvent, Origin, Workload

__all__ = ["Sensed", "Sensor", "exe_origin"]


def _digest(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def exe_origin(info: ContainerInfo, exe: str) -> Origin:
    """Image, new or modified: the overlay's upper layer against the image layers. A file in
    the upper layer whose content equals the image's (a copy-up by chmod, say) is the image's."""
    if info.upperdir is None or not exe.startswith("/"):
        return Origin.IMAGE
    rel = exe.lstrip("/")
    upper = info.upperdir / rel
    if not upper.exists():
        return Origin.IMAGE
    lower = next((d / rel for d in info.lowerdirs if (d / rel).exists()), None)
    if lower is None:
        return Origin.NEW
    if upper.stat().st_size == lower.stat().st_size and _digest(upper) == _digest(lower):
        return Origin.IMAGE
    return Origin.MODIFIED


@dataclass(frozen=True)
class Sensed:
    workload: Workload
    event: ExecEvent
    proc: ProcInfo


class Sensor:
    def __init__(self, resolver: WorkloadResolver) -> None:
        self.resolver = resolver

    def is_family(self, proc: ProcInfo, info: ContainerInfo) -> bool:
        """Descends from the container's init process, inside the container's pid namespace
        (a process `runc exec` or `kubectl exec` put there has a parent outside it)."""
        pid, seen = proc.pid, 0
        current: ProcInfo | None = proc
        while current is not None and seen < 256:
            if current.pid == info.init_pid:
                return True
            if current.pid_ns != proc.pid_ns or current.ppid <= 1:
                return False
            current = read_proc(current.ppid)
            seen += 1
        return pid == info.init_pid

    def sense_exec(self, pid: int, *, with_hash: bool = False) -> Sensed | None:
        proc = read_proc(pid)
        if proc is None:
            return None
        info = self.resolver.container_of(proc.cgroup)
        workload = self.resolver.workload(info)
        parent = read_proc(proc.ppid)
        exe_on_host = False
        origin = Origin.IMAGE
        family = True
        if info is not None:
            family = self.is_family(proc, info)
            exe_on_host = not _same_filesystem(pid, info.init_pid)
            if not exe_on_host:
                origin = exe_origin(info, proc.exe)
        event = ExecEvent(
            workload_id=workload.id, pid=pid, path=proc.exe, name=proc.comm, argv=proc.argv,
            ppid=proc.ppid, pgid=proc.pgid, sid=proc.sid, start_time=proc.start_time,
            ruid=proc.ruid, euid=proc.euid, user=self.resolver.user_name(info, proc.euid),
            real_user=self.resolver.user_name(info, proc.ruid),
            parent_name=parent.comm if parent else "", parent_path=parent.exe if parent else "",
            family=family, runtime_injected=info is not None and not family,
            exe_on_host=exe_on_host, origin=origin,
            hash=_digest(Path(f"/proc/{pid}/exe")) or "" if with_hash else "")
        return Sensed(workload, event, proc)


def _same_filesystem(pid: int, init_pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/exe").st_dev == os.stat(f"/proc/{init_pid}/root").st_dev
    except OSError:
        return True
