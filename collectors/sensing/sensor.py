"""From a pid to an exec event: /proc facts, its workload, family, image origin, users."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from collectors.kernel.procfs import (
    DEFAULT_LIMITS,
    ArgvLimits,
    ProcInfo,
    ProcStat,
    read_exe,
    read_pid_ns,
    read_proc,
    read_stat,
)
from collectors.sensing.container_files import NotRead, open_in_root, read_chunks
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver
from schemas import ExecEvent, Origin, Workload

__all__ = ["DEFAULT_ORIGIN_DIGEST_BYTES", "TRUNCATED", "Sensed", "Sensor", "cap_path",
           "count_cuts", "exe_origin", "is_loader", "still_the_exec_read"]

TRUNCATED = Counter("procwarden_collector_truncated_total",
                    "Exec and uid-change events whose argv or path was cut to a cap "
                    "(COLLECTOR_MAX_*)",
                    ["field", "cap"])


def cap_path(path: str, max_bytes: int) -> tuple[str, bool]:
    """The path within `max_bytes` (UTF-8), and whether it was cut."""
    if 4 * len(path) <= max_bytes:
        return path, False
    data = path.encode()
    if len(data) <= max_bytes:
        return path, False
    return data[:max_bytes].decode(errors="ignore"), True


def count_cuts(argv_caps: tuple[str, ...], path_cut: bool) -> bool:
    """Count the caps an event's argv (`ProcInfo.truncated`) and path hit; whether any was."""
    for cap in argv_caps:
        TRUNCATED.labels("argv", cap).inc()
    if path_cut:
        TRUNCATED.labels("path", "path_bytes").inc()
    return bool(argv_caps) or path_cut


def _digest(path: Path) -> str | None:
    """The sha256 of a running program's file (/proc/<pid>/exe: the kernel's reference to the
    file it runs, always a regular file, never a name the container picks)."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


# What exe_origin hashes of a copied-up file at most (COLLECTOR_ORIGIN_DIGEST_MAX_BYTES).
DEFAULT_ORIGIN_DIGEST_BYTES = 64 * 2**20


def _same_content(a: int, b: int, max_bytes: int) -> bool:
    if os.fstat(a).st_size != os.fstat(b).st_size:
        return False
    digests = []
    for fd in (a, b):
        h = hashlib.sha256()
        for chunk in read_chunks(fd, max_bytes):
            h.update(chunk)
        digests.append(h.digest())
    return digests[0] == digests[1]


def exe_origin(info: ContainerInfo, exe: str, *,
               max_digest_bytes: int = DEFAULT_ORIGIN_DIGEST_BYTES) -> Origin:
    """Image, new or modified: the overlay's upper layer against the image layers. A file in
    the upper layer whose content equals the image's (a copy-up by chmod, say) is the image's.
    The common case (not in the upper layer: the image's) is one access(), as
    a held exec waits on it.

    The upper layer is the container's: what is opened there is resolved with no symlink
    followed, never blocks, and is hashed only when a regular file of at most
    `max_digest_bytes` (else, or when anything is odd, it counts as modified)."""
    if info.upperdir is None or not exe.startswith("/"):
        return Origin.IMAGE
    # (a Path join costs more than this; the compiled answer makes the same check)
    if not os.access(f"{info.upperdir}{exe}", os.F_OK):
        return Origin.IMAGE
    rel = exe.lstrip("/")
    upper = lower = None
    try:
        # (None when absent; NotRead when refused)
        upper = open_in_root(info.upperdir, rel, max_bytes=max_digest_bytes, where=info.id,
                             no_symlinks=True)
        if upper is None:
            return Origin.IMAGE  # gone since: what ran came from below
        for layer in info.lowerdirs:
            lower = open_in_root(layer, rel, max_bytes=max_digest_bytes, where=info.id,
                                 no_symlinks=True)
            if lower is not None:
                break
        if lower is None:
            return Origin.NEW
        return Origin.IMAGE if _same_content(upper, lower, max_digest_bytes) else (
            Origin.MODIFIED)
    except (NotRead, OSError):
        return Origin.MODIFIED
    finally:
        for fd in (upper, lower):
            if fd is not None:
                os.close(fd)


@dataclass(frozen=True)
class Sensed:
    workload: Workload
    event: ExecEvent
    proc: ProcInfo


class Sensor:
    def __init__(self, resolver: WorkloadResolver, limits: ArgvLimits = DEFAULT_LIMITS, *,
                 origin_digest_max_bytes: int = DEFAULT_ORIGIN_DIGEST_BYTES) -> None:
        self.resolver = resolver
        self.limits = limits  # argv read bounded, masked and capped; paths capped
        self.origin_digest_max_bytes = origin_digest_max_bytes
        # Parents of gone execs, read whole: (when, what). A shell or a build tool starting
        # many short programs is the common case, and a whole read of it was most of the
        # collector's time for each of them.
        self._parent_reads: dict[int, tuple[float, ProcInfo]] = {}
        # container id -> (its init's pid, that init's pid namespace)
        self._container_ns: dict[str, tuple[int, str]] = {}
        # An exec's parent's name and file, read once: the process connector tells every change
        # of them (exec, rename, exit before its pid is reused) and each one `forget`s it.
        # Most execs come from a few long-lived parents (a shell, a server, a build tool).
        self._parent_names: dict[int, tuple[str, str]] = {}

    def forget(self, pid: int) -> None:
        """`pid` changed its credentials, exec'd, renamed itself or exited: read it anew."""
        self._parent_reads.pop(pid, None)
        self._parent_names.pop(pid, None)

    def forget_all(self) -> None:
        """Process connector messages were lost: what they would have told is unknown."""
        self._parent_reads.clear()
        self._parent_names.clear()

    def _parent_name(self, pid: int) -> tuple[str, str] | None:
        """A running exec's parent's (name, file); None when it is gone."""
        known = self._parent_names.get(pid)
        if known is None:
            stat = read_stat(pid)
            if stat is None:
                return None
            known = self._parent_names[pid] = (stat.comm, read_exe(pid))
            if len(self._parent_names) > 4096:
                self._parent_names.pop(next(iter(self._parent_names)))
        return known

    def _parent(self, pid: int) -> ProcInfo | None:
        """A gone exec's parent: read whole at most once a second while it stays the same
        process with the same name and parent (its stat is read each time to check), and
        read again after it changes its credentials, execs or exits (`forget`)."""
        now = time.monotonic()
        known = self._parent_reads.get(pid)
        if known is not None and now - known[0] < 1.0:
            stat = read_stat(pid)
            cached = known[1]
            if stat is not None and (stat.start_time, stat.ppid, stat.comm) == (
                    cached.start_time, cached.ppid, cached.comm):
                return cached
        info = read_proc(pid, limits=self.limits)
        if info is None:
            self._parent_reads.pop(pid, None)
            return None
        self._parent_reads[pid] = (now, info)
        if len(self._parent_reads) > 4096:
            self._parent_reads.pop(next(iter(self._parent_reads)))
        return info

    def is_family(self, proc: ProcInfo, info: ContainerInfo) -> bool:
        """Descends from the container's init process, inside the container's pid namespace
        (a process `runc exec` or `kubectl exec` put there has a parent outside it)."""
        # Outside the container's pid namespace (a host process moved into its cgroups) is
        # never family: said at once, not after reading every ancestor up to the host's init.
        # An exec is sensed without its namespace (`sense_exec`): read here, for a container's
        # process only.
        ns = proc.pid_ns or read_pid_ns(proc.pid)
        init_ns = self._init_ns(info)
        if init_ns and ns != init_ns:
            return False
        pid, seen = proc.pid, 0
        current: ProcInfo | None = proc
        while current is not None and seen < 256:
            if current.pid == info.init_pid:
                return True
            if (current is not proc and current.pid_ns != ns) or current.ppid <= 1:
                return False
            parent = read_proc(current.ppid)
            if parent is None:
                # The parent exited since `current` was read (`sh -c 'httpd &'` does at once):
                # the orphan now has a new parent, the container's init or a subreaper. Read
                # it again and follow that one.
                again = read_proc(current.pid)
                if again is not None and again.ppid != current.ppid:
                    parent = again
                seen += 1
                current = parent
                continue
            current = parent
            seen += 1
        return pid == info.init_pid

    def _init_ns(self, info: ContainerInfo) -> str:
        known = self._container_ns.get(info.id)
        if known is not None and known[0] == info.init_pid:
            return known[1]
        ns = read_pid_ns(info.init_pid)
        if not ns:
            return ""  # its init is gone: the walk decides
        if len(self._container_ns) > 4096:
            self._container_ns.clear()
        self._container_ns[info.id] = (info.init_pid, ns)
        return ns

    def sense_exec(self, pid: int, *, with_hash: bool = False) -> Sensed | None:
        # only family needs the namespace (`is_family`)
        proc = read_proc(pid, with_pid_ns=False, limits=self.limits)
        if proc is None or not proc.exe:
            return None  # gone, or exiting (a zombie has no exe): its notice tells the file
        info = self.resolver.container_of(proc.cgroup)
        workload = self.resolver.workload(info)
        parent_name, parent_path = self._parent_name(proc.ppid) or ("", "")
        exe_on_host = False
        origin = Origin.IMAGE
        family = True
        if info is not None:
            family = self.is_family(proc, info)
            exe_on_host = not _same_filesystem(pid, info.init_pid)
            if not exe_on_host:
                origin = exe_origin(info, proc.exe,
                                    max_digest_bytes=self.origin_digest_max_bytes)
        path, path_cut = cap_path(proc.exe, self.limits.max_path_bytes)
        parent_path = cap_path(parent_path, self.limits.max_path_bytes)[0]
        event = ExecEvent(
            workload_id=workload.id, pid=pid, path=path, name=proc.comm, argv=proc.argv,
            ppid=proc.ppid, pgid=proc.pgid, sid=proc.sid, start_time=proc.start_time,
            ruid=proc.ruid, euid=proc.euid, user=self.resolver.user_name(info, proc.euid),
            real_user=self.resolver.user_name(info, proc.ruid),
            parent_name=parent_name, parent_path=parent_path,
            family=family, runtime_injected=info is not None and not family,
            exe_on_host=exe_on_host, origin=origin,
            hash=_digest(Path(f"/proc/{pid}/exe")) or "" if with_hash else "",
            argv_truncated=bool(proc.truncated) or path_cut)
        stat = read_stat(pid)
        if stat is None or not still_the_exec_read(proc, stat):
            # It exited while we read (its cgroup may already read as the host's), or it
            # exec'd again: what we read may mix two programs (the name of one, the file of the
            # next), so this exec is told by its notice and the next by its own event.
            return None
        count_cuts(proc.truncated, path_cut)
        return Sensed(workload, event, proc)

    def sense_gone(self, pid: int, path: str, dev: int, parent_pid: int | None) -> Sensed | None:
        """An exec whose process ended before /proc could be read: the file from fanotify, the
        workload, credentials and family from the parent (which a short child usually
        outlives), or the workload from the file's filesystem when the parent is gone too.
        None for a BusyBox applet: the file is always /bin/busybox and the applet unknown."""
        path, path_cut = cap_path(path, self.limits.max_path_bytes)
        base = path.rsplit("/", 1)[-1]
        if not path or base == "busybox":
            return None
        parent = self._parent(parent_pid) if parent_pid else None
        info = (self.resolver.container_of(parent.cgroup) if parent is not None
                else self.resolver.container_by_dev(dev))
        workload = self.resolver.workload(info)
        family = True  # unknown without a parent: the default of the wire format
        if info is not None and parent is not None:
            family = self.is_family(parent, info)
        ruid, euid = (parent.ruid, parent.euid) if parent is not None else (0, 0)
        origin = (exe_origin(info, path, max_digest_bytes=self.origin_digest_max_bytes)
                  if info is not None else Origin.IMAGE)
        event = ExecEvent(
            workload_id=workload.id, pid=pid, path=path, name=base[:15], argv=(base,),
            ppid=parent.pid if parent else 0, pgid=parent.pgid if parent else 0,
            sid=parent.sid if parent else 0, ruid=ruid, euid=euid,
            user=self.resolver.user_name(info, euid), real_user=self.resolver.user_name(info, ruid),
            parent_name=parent.comm if parent else "",
            parent_path=cap_path(parent.exe, self.limits.max_path_bytes)[0] if parent else "",
            family=family, runtime_injected=info is not None and not family, origin=origin,
            partial=True, argv_truncated=count_cuts((), path_cut))
        proc = ProcInfo(pid=pid, ppid=event.ppid, pgid=event.pgid, sid=event.sid, start_time=0,
                        comm=event.name, exe=path, argv=event.argv, ruid=ruid, euid=euid,
                        pid_ns="", cgroup=parent.cgroup if parent else "")
        return Sensed(workload, event, proc)


def still_the_exec_read(proc: ProcInfo, stat: ProcStat) -> bool:
    """Whether a process read as `proc` still runs the program read, by a fresh stat: the same
    process (start time), not exiting, and the same name, which changes with each exec. A
    BusyBox process may change its name without one: it renames itself from "exe" to its
    applet right after re-executing itself."""
    if stat.state in ("Z", "X") or stat.start_time != proc.start_time:
        return False
    return stat.comm == proc.comm or proc.exe.rsplit("/", 1)[-1] == "busybox"


def is_loader(path: str) -> bool:
    """The ELF interpreter an exec opens after the program itself (ld-linux*.so*, ld-musl*)."""
    base = path.rsplit("/", 1)[-1]
    return base.startswith("ld-") and ".so" in base


def _same_filesystem(pid: int, init_pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/exe").st_dev == os.stat(f"/proc/{init_pid}/root").st_dev
    except OSError:
        return True
