"""Facts about one process from /proc, read once, tolerant of the process vanishing."""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass
from typing import NamedTuple

from schemas.records import fast_init

__all__ = ["ProcInfo", "ProcStat", "opens_for_writing", "parse_stat", "process_name", "read_cgroup",
           "read_exe", "read_pid_ns", "read_proc", "read_stat"]


@fast_init
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
    cgroup: str


def _read(path: str) -> str | None:
    # Plain descriptors: Python's file objects cost more than the kernel's work for a small
    # /proc file, and these reads are most of the collector's time (and of each held exec).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 8192)
        if len(data) == 8192:  # a long command line or cgroup list: read on to the end
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data.decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcStat(NamedTuple):
    ppid: int
    start_time: int
    comm: str
    state: str


def read_stat(pid: int) -> ProcStat | None:
    """Just /proc/<pid>/stat: one read, for paths that must be fast."""
    stat = _read(f"/proc/{pid}/stat")
    return None if stat is None else parse_stat(stat)


def parse_stat(stat: str) -> ProcStat:
    """The fields of a /proc/<pid>/stat line this project uses."""
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return ProcStat(int(fields[1]), int(fields[19]), head.partition("(")[2], fields[0])


def read_exe(pid: int, root: str = "/proc") -> str:
    """The process's executable as the host sees it ("" if unreadable)."""
    try:
        return os.readlink(f"{root}/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


def read_pid_ns(pid: int, root: str = "/proc") -> str:
    """The process's pid namespace, as "pid:[inode]" ("" if unreadable)."""
    try:
        return os.readlink(f"{root}/{pid}/ns/pid")
    except OSError:
        return ""


def read_cgroup(pid: int) -> str | None:
    return _read(f"/proc/{pid}/cgroup")


def read_proc(pid: int, root: str = "/proc", *, with_pid_ns: bool = True) -> ProcInfo | None:
    """The process's facts, or None when it is gone (short-lived processes often are).
    with_pid_ns=False leaves `pid_ns` empty, for a caller that reads it only for a container's
    process (`read_pid_ns`): one system call fewer per host exec."""
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
    cmdline = _read(f"{base}/cmdline") or ""
    argv = tuple(cmdline.rstrip("\0").split("\0")) if cmdline else ()

    pid_ns = read_pid_ns(pid, root) if with_pid_ns else ""
    exe = read_exe(pid, root)
    return ProcInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    start_time=int(fields[19]), comm=process_name(comm, exe, argv), exe=exe,
                    argv=argv, ruid=int(uids[0]), euid=int(uids[1]), pid_ns=pid_ns,
                    cgroup=_read(f"{base}/cgroup") or "")


def process_name(comm: str, exe: str, argv: tuple[str, ...]) -> str:
    """The process's name: its comm, except right after BusyBox re-executed itself through
    /proc/self/exe to run an applet. The kernel names such a process "exe" (after the file it
    was given) and BusyBox renames it to its applet, the base of argv[0], a moment later: the
    collector, reading at once, reports the name it is about to have."""
    if comm == "exe" and argv and exe.rsplit("/", 1)[-1] == "busybox":
        return argv[0].rsplit("/", 1)[-1][:15]  # comm holds at most 15 characters
    return comm


# The open system calls by number, and which argument holds the open flags; None: creat (always
# writes). openat2 (437 everywhere) keeps its flags in a struct the caller points to.
_OPENS_BY_ARCH: dict[str, dict[int, int | None]] = {
    "x86_64": {2: 1, 257: 2, 304: 2, 85: None},  # open, openat, open_by_handle_at, creat
    "aarch64": {56: 2, 265: 2},  # openat, open_by_handle_at
}
_OPENS = _OPENS_BY_ARCH.get(platform.machine(), {})
_OPENAT2 = 437
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


def opens_for_writing(tid: int) -> bool | None:
    """Whether the thread `tid`, blocked in an open system call (a held fanotify open), opens for
    writing or truncating; None when it is not in an open call we can read (io_uring, an exec
    opening its file, a thread gone)."""
    line = _read(f"/proc/{tid}/syscall")
    if line is None:
        return None
    fields = line.split()
    if len(fields) < 7 or not fields[0].isdigit():
        return None  # "running": not blocked in a system call
    number = int(fields[0])
    if number == _OPENAT2:
        try:
            with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
                mem.seek(int(fields[3], 16))
                flags = struct.unpack("Q", mem.read(8))[0]
        except (OSError, struct.error, OverflowError):
            return None
    elif number in _OPENS:
        arg = _OPENS[number]
        if arg is None:
            return True
        flags = int(fields[1 + arg], 16)
    else:
        return None
    return bool(flags & _WRITES)
