"""Zero-drift Protect: writes that would be drift are denied before they happen
(docs/behaviour.md §6).

A fanotify group with `FAN_OPEN_PERM` on the root mounts of guarded containers holds every open
of a file in them. The caller is blocked inside its open system call, so /proc/<tid>/syscall
still shows the flags it asked for: a read is let through at once; an open for writing (or
truncating) a file that came with the image or is executable is drift, which is denied, so the
file stays as it was, and reported as a held `modify` for the stream app to record. Everything
else goes ahead.

Which workloads are guarded is the stream app's call (its `HoldSettings` records: held before exec
and zero-drift); whether a write is drift is the same predicate the engine judges file events with.
Writes this cannot see before they happen (a descriptor opened before the guard began, io_uring
opens) are still reported after the fact by the file watch.

It runs in the exec answerer's process (`exec_answerer.py`), in the same loop as the held execs:
no GIL is shared with the collector's sensing thread. No answer ever waits on the network: every
open in a guarded container waits on this loop, so it reads three small /proc files and nothing
on the guarded mounts themselves.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable

from collectors.kernel.fanotify import FAN_OPEN_PERM, Permission, PermissionGroup
from collectors.kernel.procfs import opens_for_writing, read_cgroup, read_exe, read_stat
from collectors.sensing.workloads import WorkloadResolver
from schemas import FileEvent, FileOp

__all__ = ["WriteGuard"]

log = logging.getLogger("procwarden.collector.write_guard")


class WriteGuard:
    """`report` is called with each denied write to publish (at most once a second for the same
    workload, file and process)."""

    def __init__(self, resolver: WorkloadResolver, report: Callable[[FileEvent], None]) -> None:
        self.resolver = resolver
        self.report = report
        self.group = PermissionGroup(FAN_OPEN_PERM)
        self.answered: Counter[str] = Counter()  # allow | deny -> opens
        self._mounts: dict[str, str] = {}  # guarded workload -> its watched root mount
        # (workload, path, pid) -> when its denial was last reported: a program that retries
        # a denied write in a loop is reported once a second, not once per attempt.
        self._reported: dict[tuple[str, str, int], float] = {}

    def fileno(self) -> int:
        return self.group.fd

    def close(self) -> None:
        self.group.close()  # whatever is still held goes ahead

    def guarded(self, workload_id: str) -> bool:
        return workload_id in self._mounts

    def guard(self, workload_id: str, on: bool) -> None:
        """Start or stop denying drift writes in a workload (a container with a known root)."""
        mount = self._mounts.get(workload_id)
        if on and mount is None:
            info = self.resolver.container(workload_id)
            if info is None or not info.init_pid:
                return
            mount = f"/proc/{info.init_pid}/root"
            try:
                self.group.watch(mount)
            except OSError as exc:
                log.error("cannot hold writes in %s: %s", workload_id, exc)
                return
            self._mounts[workload_id] = mount
            log.info("denying drift writes in %s before they happen", workload_id)
        elif not on and mount is not None:
            self.group.unwatch(mount)
            del self._mounts[workload_id]
            log.info("no longer holding writes in %s", workload_id)

    def answer_pending(self) -> None:
        """Answer every open held now."""
        for event in self.group.read():
            try:
                allow = self.on_open(event)
            except Exception:
                log.exception("judging a held open failed: allowing it")
                allow = True
            try:
                self.group.answer(event, allow)
            except OSError as exc:
                log.warning("answering a held open failed: %s", exc)
            self.answered["allow" if allow else "deny"] += 1

    def on_open(self, event: Permission) -> bool:
        """Whether the held open may go ahead; a denied one is published as a held modify."""
        if not opens_for_writing(event.pid):
            return True  # reads (almost every open) are answered after one small read
        cgroup = read_cgroup(event.pid)
        info = self.resolver.container_of(cgroup) if cgroup is not None else None
        if info is None or info.id not in self._mounts:
            return True  # a host process writing through the container's mount is its own
        st = os.fstat(event.fd)
        if not stat.S_ISREG(st.st_mode):
            return True
        path = event.path()
        proc = read_stat(event.pid)
        exe = read_exe(event.pid)
        write = FileEvent(workload_id=info.id, op=FileOp.MODIFY, path=path,
                          executable=bool(st.st_mode & 0o111),
                          was_executable=bool(st.st_mode & 0o111),
                          from_image=info.in_image(path), in_container_fs=True, held=True,
                          pid=event.pid, proc_name=proc.comm if proc else "", proc_path=exe)
        if not write.is_drift:
            return True
        now = time.monotonic()
        key = (info.id, path, event.pid)
        if now - self._reported.get(key, -1.0) >= 1.0:
            if len(self._reported) > 10_000:
                self._reported.clear()
            self._reported[key] = now
            self.report(write)
            log.warning("denied a write before it happened: %s by %s (pid %d) in %s", path,
                        write.proc_name, event.pid, info.id)
        return False
