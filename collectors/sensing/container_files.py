"""Reading a small file of a workload's filesystem (its /etc/passwd, /etc/login.defs, ...) as
root without letting the workload choose what is read.

The container owns those paths: it can make /etc/passwd an absolute symlink (followed from the
host, it names a host file), a FIFO (an open for reading blocks until a writer comes), a device
(/dev/zero never ends), a 50 MB file, or put a mount it controls over /etc. So the path is
resolved by the kernel with `openat2` inside the workload's root (`RESOLVE_IN_ROOT`: an absolute
symlink stays inside it; `RESOLVE_NO_MAGICLINKS`: no /proc/<pid>/fd jump out; `RESOLVE_NO_XDEV`:
no other mount), opened first with `O_PATH` (which opens nothing: a FIFO or a device is looked
at, never opened), read only when it is a regular file within the cap, and refused whole
otherwise. A kernel without `openat2` (before 5.6) gets no read at all, never an unsafe one.

The node's own files (pid 1's root) are read the same way, and so are the files of a
container's overlay layers the collector compares (`sensing.exe_origin`), there with no symlink
followed at all (`RESOLVE_NO_SYMLINKS`): the path is one the kernel resolved already, so a link
on it is the container's doing.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import Counter

__all__ = ["DEFAULT_MAX_BYTES", "REFUSED", "NotRead", "open_in_root", "read_chunks",
           "read_container_file", "read_in_root"]

log = logging.getLogger(__name__)

# passwd, group and login.defs of a real image are a few KiB; a bigger one is refused whole.
DEFAULT_MAX_BYTES = 64 * 1024

REFUSED = Counter("procwarden_collector_container_file_refused_total",
                  "Workload files refused unread (not a regular file, over the cap, on another "
                  "mount, openat2 unavailable, changed while opened, or an error)", ["reason"])

_SYS_OPENAT2 = 437  # the same number on every architecture with the unified table (5.6+)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_IN_ROOT = 0x10
_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESRCH})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# (where, path) already logged; bounded, the oldest forgotten first.
_logged: OrderedDict[tuple[str, str], None] = OrderedDict()
_LOGGED_MAX = 1024


class NotRead(Exception):
    """A workload file refused unread: `reason` is REFUSED's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _openat2_path(dirfd: int, path: str, resolve: int) -> int:
    """An O_PATH descriptor of `path` resolved inside `dirfd` as `resolve` says."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, resolve)
    for _ in range(3):
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                      ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # RESOLVE_IN_ROOT met a concurrent rename: try again
            continue
        if err == errno.ENOSYS:
            raise NotRead("unsupported")
        if err == errno.EXDEV:
            raise NotRead("other_mount")
        if err == errno.ELOOP:
            raise NotRead("symlinks")  # a loop, a magic link, or any link when refused
        raise OSError(err, os.strerror(err), path)
    raise NotRead("changed")


def _open_regular(dirfd: int, path: str, max_bytes: int, resolve: int) -> int:
    """A read-only descriptor of `path` inside `dirfd`, a regular file of at most `max_bytes`
    when opened."""
    fd = _openat2_path(dirfd, path, resolve)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRead("not_regular")
        if st.st_size > max_bytes:
            raise NotRead("too_large")
        # Reopened through the O_PATH descriptor: the same inode, whatever the path names now.
        rfd = os.open(f"/proc/self/fd/{fd}",
                      os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        again = os.fstat(rfd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(
                again.st_mode):
            raise NotRead("changed")
    except BaseException:
        os.close(rfd)
        raise
    return rfd


def read_chunks(fd: int, max_bytes: int) -> Iterator[bytes]:
    """What `fd` holds, in chunks; NotRead("too_large") once past `max_bytes` (a file may
    grow after it was opened: one byte over is enough to know)."""
    size = 0
    while size <= max_bytes:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
        if not chunk:
            return
        size += len(chunk)
        if size > max_bytes:
            break
        yield chunk
    raise NotRead("too_large")


def _refuse(where: str, path: str, reason: str) -> None:
    REFUSED.labels(reason).inc()
    key = (where, path)
    if key in _logged:
        return
    _logged[key] = None
    if len(_logged) > _LOGGED_MAX:
        _logged.popitem(last=False)
    log.warning("%s of %s not read: %s", path, where, reason)


def open_in_root(root: str | Path, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 where: str | None = None, no_symlinks: bool = False) -> int | None:
    """A read-only, non-blocking descriptor (the caller closes it) of `path` as seen from the
    directory `root` taken as `/`, a regular file of at most `max_bytes`; None when it does
    not exist there. Refused (NotRead, counted in REFUSED, logged once per `where`/`path`):
    not a regular file, over `max_bytes`, reached through another mount or a magic link (any
    symlink with `no_symlinks`), or openat2 missing. Never blocks on the file's kind."""
    where = str(root) if where is None else where
    rel = path.lstrip("/") or "."
    resolve = _RESOLVE | _RESOLVE_NO_SYMLINKS if no_symlinks else _RESOLVE
    try:
        dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in _ABSENT:
            _refuse(where, path, "error")
            raise NotRead("error") from exc
        return None  # the process is gone
    try:
        return _open_regular(dirfd, rel, max_bytes, resolve)
    except NotRead as refused:
        _refuse(where, path, refused.reason)
        raise
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        _refuse(where, path, "error")
        raise NotRead("error") from exc
    finally:
        os.close(dirfd)


def read_in_root(root: str | Path, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 where: str | None = None) -> bytes | None:
    """The content of `path` as seen from the directory `root` taken as `/`; None when it does
    not exist there, or when it is refused as `open_in_root` says (symlinks are followed,
    inside `root`). Never reads more than `max_bytes`+1."""
    try:
        fd = open_in_root(root, path, max_bytes=max_bytes, where=where)
    except NotRead:
        return None
    if fd is None:
        return None
    try:
        return b"".join(read_chunks(fd, max_bytes))
    except NotRead as refused:
        _refuse(str(root) if where is None else where, path, refused.reason)
    except OSError:
        _refuse(str(root) if where is None else where, path, "error")
    finally:
        os.close(fd)
    return None


def read_container_file(pid: int, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                        where: str | None = None) -> bytes | None:
    """`path` in the root filesystem of process `pid` (a container's init; 1 for the node),
    read as `read_in_root` does."""
    return read_in_root(f"/proc/{pid}/root", path, max_bytes=max_bytes,
                        where=where or f"pid {pid}")
