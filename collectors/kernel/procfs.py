"""Facts about one process from /proc, read once, tolerant of the process vanishing."""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from schemas.masking import mask_argv
from schemas.records import fast_init

if TYPE_CHECKING:
    from collectors.settings import CollectorSettings

__all__ = ["DEFAULT_LIMITS", "ArgvLimits", "ProcInfo", "ProcStat", "bound_argv",
           "opens_for_writing", "parse_stat", "process_name", "read_cgroup", "read_exe",
           "read_pid_ns", "read_proc", "read_stat"]

MAX_ARG_STRLEN = 128 * 1024  # the kernel's limit on one argument of an exec


@dataclass(frozen=True, slots=True)
class ArgvLimits:
    """How much of a command line the collector keeps (COLLECTOR_MAX_ARGS, ...): a process
    chooses its own, up to megabytes, and every event carries it to Kafka (1 MB a message),
    ClickHouse and the SIEM (64 KiB a syslog line)."""

    max_args: int = 256
    max_arg_bytes: int = 4096
    max_total_bytes: int = 32 * 1024
    max_path_bytes: int = 4096
    mask: bool = True  # mask secrets (schemas/masking.py); False: COLLECTOR_FULL_CMDLINE

    @classmethod
    def of(cls, settings: CollectorSettings) -> ArgvLimits:
        return cls(max_args=settings.max_args, max_arg_bytes=settings.max_arg_bytes,
                   max_total_bytes=settings.max_cmdline_bytes,
                   max_path_bytes=settings.max_path_bytes, mask=not settings.full_cmdline)

    @property
    def read_bytes(self) -> int:
        """What is read of /proc/<pid>/cmdline: every argument that starts within the total is
        read whole (the kernel's limit), so it is masked whole before it is cut."""
        return self.max_total_bytes + MAX_ARG_STRLEN


DEFAULT_LIMITS = ArgvLimits()


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
    truncated: tuple[str, ...] = ()  # the argv caps it hit ("args", "arg_bytes", "total_bytes")


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


def _read_bounded(path: str, limit: int) -> tuple[bytes, bool] | None:
    """At most `limit` bytes of a file, and whether there was more."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, min(8192, limit + 1))
        if len(data) == 8192:
            chunks, size = [data], len(data)
            while size <= limit and (chunk := os.read(fd, min(65536, limit + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
        if len(data) > limit:
            return data[:limit], True
        return data, False
    except OSError:
        return None
    finally:
        os.close(fd)


def bound_argv(raw: bytes, cut: bool, limits: ArgvLimits = DEFAULT_LIMITS
               ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A command line as /proc gives it (NUL-separated, maybe cut at `limits.read_bytes`):
    the arguments, masked unless told not to, within the caps; and which caps were hit."""
    if not raw:
        return (), ()
    parts = raw.rstrip(b"\0").split(b"\0")
    hit: list[str] = []
    if cut:
        hit.append("total_bytes")
    if len(parts) > limits.max_args:
        parts = parts[:limits.max_args]
        hit.append("args")
    argv = tuple(p.decode(errors="replace") for p in parts)
    if limits.mask:
        argv = mask_argv(argv)
    longest = max(len(a) for a in argv)
    if (4 * longest <= limits.max_arg_bytes  # (UTF-8 takes at most 4 bytes a character)
            and 4 * sum(len(a) for a in argv) <= limits.max_total_bytes):
        return argv, tuple(hit)
    out: list[str] = []
    room = limits.max_total_bytes
    for arg in argv:
        data = arg.encode()
        keep = min(len(data), limits.max_arg_bytes, room)
        if keep < len(data):
            cap = "arg_bytes" if keep == limits.max_arg_bytes else "total_bytes"
            if cap not in hit:
                hit.append(cap)
            out.append(data[:keep].decode(errors="ignore"))  # a character cut in two: left out
        else:
            out.append(arg)
        room -= keep
        if room <= 0:
            if len(out) < len(argv) and "total_bytes" not in hit:
                hit.append("total_bytes")
            break
    return tuple(out), tuple(hit)


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


def read_proc(pid: int, root: str = "/proc", *, with_pid_ns: bool = True,
              limits: ArgvLimits = DEFAULT_LIMITS) -> ProcInfo | None:
    """The process's facts, or None when it is gone (short-lived processes often are).
    with_pid_ns=False leaves `pid_ns` empty, for a caller that reads it only for a container's
    process (`read_pid_ns`): one system call fewer per host exec. Its argv is read bounded,
    masked and capped by `limits`."""
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
    cmdline = _read_bounded(f"{base}/cmdline", limits.read_bytes)
    argv, truncated = bound_argv(*cmdline, limits) if cmdline is not None else ((), ())

    pid_ns = read_pid_ns(pid, root) if with_pid_ns else ""
    exe = read_exe(pid, root)
    return ProcInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    start_time=int(fields[19]), comm=process_name(comm, exe, argv), exe=exe,
                    argv=argv, ruid=int(uids[0]), euid=int(uids[1]), pid_ns=pid_ns,
                    cgroup=_read(f"{base}/cgroup") or "", truncated=truncated)


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
