"""Facts about one process from /proc, read once, tolerant of the process vanishing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ProcInfo", "ProcStat", "read_cgroup", "read_proc", "read_stat"]


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks after boot: with the pid, names one process for kill safety
    comm: str
    exe: str  # resolved executable, as the host sees it ("" if unreadable)
    argv: tuple[str, ...]
    ruid: int
    euid: int
    pid_ns: str  # "pid:[4026531836]"
    mnt_ns: str
    cgroup: str


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return None


class ProcStat(NamedTuple):
    ppid: int
    start_time: int
    comm: str
    state: str


def read_stat(pid: int) -> ProcStat | None:
    """Just /proc/<pid>/stat: one read, for paths that must be fast (held execs)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return ProcStat(int(fields[1]), int(fields[19]), head.partition("(")[2], fields[0])


def read_cgroup(pid: int) -> str | None:
    return _read(f"/proc/{pid}/cgroup")


def read_proc(pid: int, root: str = "/proc") -> ProcInfo | None:
    """The process's facts, or None when it is gone (short-lived processes often are)."""
    base = f"{root}/{pid}"
    stat = _read(f"{base}/stat")
    status = _read(f"{base}/status")
    if stat is None or status is None:
        return None
    # comm may contain spaces and parentheses: split at the last ')'.
    head, _, rest = stat.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    uids = next((line.split()[1:3] for line in status.splitlines()
                 if line.startswith("Uid:")), ["0", "0"])
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""
    cmdline = _read(f"{base}/cmdline") or ""
    argv = tuple(cmdline.rstrip("\0").split("\0")) if cmdline else ()

    def ns(kind: str) -> str:
        try:
            return os.readlink(f"{base}/ns/{kind}")
        except OSError:
            return ""

    return ProcInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    start_time=int(fields[19]), comm=comm, exe=exe.removesuffix(" (deleted)"),
                    argv=argv, ruid=int(uids[0]), euid=int(uids[1]), pid_ns=ns("pid"),
                    mnt_ns=ns("mnt"), cgroup=_read(f"{base}/cgroup") or "")
