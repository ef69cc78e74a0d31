"""fanotify: permission events (the kernel holds an exec, or an open, until we answer it) and
notifications (which file a pid executed, even when the process is gone before /proc is read).

A thin binding over the two system calls (libc has them; Python's os module does not) and the
event records. Each event carries an open descriptor of the file and the pid (or thread id) of
the caller. A permission group watches the root mounts of the containers whose execs or writes
must be held, and the caller waits until `answer` writes allow or deny for that descriptor; a
notification group watches whole filesystems and only reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from schemas.records import fast_init

__all__ = ["FAN_OPEN_EXEC_PERM", "FAN_OPEN_PERM", "FAN_Q_OVERFLOW", "METADATA", "ExecNotice",
           "FanotifyError", "NotificationGroup", "Permission", "PermissionGroup", "answer_until",
           "file_id_group", "libc"]

log = logging.getLogger("procwarden.collector.fanotify")

_FAN_CLOEXEC = 0x01
_FAN_NONBLOCK = 0x02
_FAN_CLASS_NOTIF = 0x00
_FAN_CLASS_CONTENT = 0x04
_FAN_REPORT_TID = 0x100
_FAN_OPEN_PERM = 0x0001_0000
_FAN_OPEN_EXEC = 0x0000_1000
_FAN_OPEN_EXEC_PERM = 0x0004_0000
_FAN_Q_OVERFLOW = 0x0000_4000
_FAN_MARK_ADD = 0x01
_FAN_MARK_REMOVE = 0x02
_FAN_MARK_IGNORED_MASK = 0x20
_FAN_MARK_FLUSH = 0x80
_FAN_MARK_IGNORED_SURV_MODIFY = 0x40
_FAN_MARK_MOUNT = 0x10
_FAN_MARK_FILESYSTEM = 0x100
_FAN_ALLOW = 0x01
_FAN_DENY = 0x02
_O_LARGEFILE = 0o100000
_AT_FDCWD = -100
_METADATA = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("iI")  # fd, response
_METADATA_VERSION = 3

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


class FanotifyError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise FanotifyError(err, f"{what}: {os.strerror(err)}")
    return result


libc = _libc
METADATA = _METADATA
FAN_Q_OVERFLOW = _FAN_Q_OVERFLOW
FAN_OPEN_PERM = _FAN_OPEN_PERM
FAN_OPEN_EXEC_PERM = _FAN_OPEN_EXEC_PERM
_FAN_REPORT_DFID_NAME = 0x0400 | 0x0800  # directory file id + entry name


def file_id_group(path: str, mask: int) -> int:
    """A non-blocking notification group reporting (directory handle, name) for `mask` events
    anywhere on the filesystem holding `path`; its descriptor."""
    fd = _check(_libc.fanotify_init(_FAN_CLASS_NOTIF | _FAN_CLOEXEC | _FAN_NONBLOCK
                                    | _FAN_REPORT_DFID_NAME, os.O_RDONLY | os.O_CLOEXEC),
                "fanotify_init (file ids)")
    try:
        _check(_libc.fanotify_mark(fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, mask, _AT_FDCWD,
                                   path.encode()), f"fanotify_mark {path}")
    except FanotifyError:
        os.close(fd)
        raise
    return fd


@fast_init
@dataclass(frozen=True, slots=True)
class Permission:
    """One held exec or open: answer it exactly once, then it is closed."""

    fd: int  # the file, opened by the kernel for us
    pid: int  # the caller (an exec's caller still runs its old program); a thread id when
    # the group reports them

    def path(self) -> str:
        """The file's path as seen from the mount it was reached through ("" if unreadable)."""
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return ""


# A read that fails with one of these is this code's fault or a closed group: it raises. Any
# other error (EMFILE, ENFILE, ENOMEM, EACCES...) is the kernel failing to open the next event's
# file for us: it dropped that event (a permission event: it denied it itself) and the group
# goes on, so the read counts it and returns.
_BROKEN_READ = frozenset({errno.EBADF, errno.EINVAL, errno.EFAULT})


@dataclass(slots=True)
class _Read:
    events: list[tuple[int, int, int]]  # (mask, fd, pid) of each record with a descriptor
    overflow: bool = False  # the kernel's queue overflowed: events were dropped
    errors: int = 0  # events that came without a descriptor


def _read_events(fd: int, buffer: bytearray) -> _Read:
    """The pending records (none when nothing waits: the group is non-blocking)."""
    try:
        n = os.readv(fd, [buffer])
    except BlockingIOError:
        return _Read([])
    except OSError as exc:
        if exc.errno in _BROKEN_READ:
            raise
        return _Read([], errors=1)
    view = memoryview(buffer)[:n]
    read = _Read([])
    offset = 0
    while offset + _METADATA.size <= n:
        length, version, _, _, mask, event_fd, pid = _METADATA.unpack_from(view, offset)
        if version != _METADATA_VERSION or length < _METADATA.size:
            # nothing after it can be parsed; what came before still has to be answered
            if read.events:
                log.error("unexpected fanotify record (version %d): the rest of the read "
                          "is lost", version)
                read.errors += 1
                return read
            raise FanotifyError(0, f"unexpected fanotify record (version {version})")
        if mask & _FAN_Q_OVERFLOW:
            read.overflow = True
        elif event_fd >= 0:
            read.events.append((mask, event_fd, pid))
        else:
            read.errors += 1
        offset += length
    return read


class _Group:
    def __init__(self, flags: int, mask: int) -> None:
        self.fd = _check(_libc.fanotify_init(flags | _FAN_CLOEXEC | _FAN_NONBLOCK,
                                             os.O_RDONLY | _O_LARGEFILE | os.O_CLOEXEC),
                         "fanotify_init")
        self.mask = mask
        self._buffer = bytearray(64 * 1024)
        self.overflows = 0  # reads that found the kernel's queue had overflowed
        # events the kernel could not give a descriptor for (out of descriptors, say): each was
        # dropped (a permission event: denied by the kernel)
        self.read_errors = 0

    def _read(self) -> list[tuple[int, int, int]]:
        read = _read_events(self.fd, self._buffer)
        self.overflows += read.overflow
        if read.errors:
            if not self.read_errors:
                log.warning("the kernel could not give this process an event's file (said "
                            "once, counted): its event was dropped")
            self.read_errors += read.errors
        return read.events

    def fileno(self) -> int:
        return self.fd

    def _mark(self, flags: int, path: str) -> None:
        _check(_libc.fanotify_mark(self.fd, flags, self.mask, _AT_FDCWD, path.encode()),
               f"fanotify_mark {path}")

    def _ignore_file(self, fd: int, flags: int = 0) -> None:
        """No more of this group's events for the file open as `fd` (an ignore mark on it,
        which the kernel drops when the file is written unless `flags` says otherwise)."""
        _check(_libc.fanotify_mark(self.fd, _FAN_MARK_ADD | _FAN_MARK_IGNORED_MASK | flags,
                                   self.mask, fd, None), "fanotify_mark (ignore)")

    def close(self) -> None:
        os.close(self.fd)


class PermissionGroup(_Group):
    """A fanotify group for permission events on whole mounts: `FAN_OPEN_EXEC_PERM` holds execs,
    `FAN_OPEN_PERM` every open (with thread ids, so the caller's system call can be read)."""

    def __init__(self, mask: int = _FAN_OPEN_EXEC_PERM) -> None:
        super().__init__(_FAN_CLASS_CONTENT | (_FAN_REPORT_TID if mask & _FAN_OPEN_PERM else 0),
                         mask)
        self._ignore_failed = False  # warned once

    def watch(self, mount: str) -> None:
        """Hold every exec (or open) of a file reached through `mount` (a container's root)."""
        self._mark(_FAN_MARK_ADD | _FAN_MARK_MOUNT, mount)

    def unwatch(self, mount: str) -> None:
        # A mount gone with its container took its mark with it.
        with contextlib.suppress(FanotifyError):
            self._mark(_FAN_MARK_REMOVE | _FAN_MARK_MOUNT, mount)

    def read(self) -> list[Permission]:
        """The pending permission events (none when nothing waits: the group is non-blocking).
        One the kernel could not give us is counted in `read_errors`, never raised: the kernel
        denied it, and the group goes on holding."""
        held = []
        for mask, fd, pid in self._read():
            if mask & self.mask:
                held.append(Permission(fd, pid))
            else:  # not one of ours; if the kernel waits on it, it waits no longer
                with contextlib.suppress(OSError):
                    os.write(self.fd, _RESPONSE.pack(fd, _FAN_ALLOW))
                os.close(fd)
        return held

    def answer(self, event: Permission, allow: bool, remember: bool = False) -> bool:
        """Answer a held event. remember (with allow): from now on the kernel allows this
        file's events itself, unheld (an ignore mark on the file, which the kernel drops when
        the file is written), if the file has a single name: the policy judges paths, and
        another name of it would be allowed with it. Whether the kernel remembers it."""
        try:
            os.write(self.fd, _RESPONSE.pack(event.fd, _FAN_ALLOW if allow else _FAN_DENY))
            return allow and remember and self._ignore(event.fd)
        finally:
            os.close(event.fd)

    def _ignore(self, fd: int) -> bool:
        try:
            if os.fstat(fd).st_nlink != 1:
                return False
            self._ignore_file(fd)
        except OSError as exc:  # (out of marks, say): the collector's own cache answers
            if not self._ignore_failed:
                log.warning("the kernel cannot answer for files (said once): %s", exc)
            self._ignore_failed = True
            return False
        return True

    def forget_remembered(self) -> None:
        """Every file remembered by `answer` is held again (the policy changed)."""
        # Without FAN_MARK_MOUNT, a flush removes the marks of files, not of mounts.
        _check(_libc.fanotify_mark(self.fd, _FAN_MARK_FLUSH, 0, _AT_FDCWD, None),
               "fanotify_mark (flush)")

    def close(self) -> None:
        # Closing the group lets everything still held go ahead: the kernel allows it.
        super().close()


@fast_init
@dataclass(frozen=True, slots=True)
class ExecNotice:
    pid: int
    path: str  # as seen from the mount it was reached through (container-relative inside one)
    dev: int  # the executable's device: tells which container's filesystem it is on
    ino: int


class NotificationGroup(_Group):
    """Exec notifications for whole filesystems (the host's and each container's root).

    unwanted: files whose notices are never used (the ELF interpreter, opened for exec with
    every dynamically linked program): the first one's file gets an ignore mark, so the kernel
    stops sending them, which halves the notices of a typical exec.
    """

    def __init__(self, unwanted: Callable[[str], bool] = lambda path: False) -> None:
        super().__init__(_FAN_CLASS_NOTIF, _FAN_OPEN_EXEC)
        self.unwanted_seen = 0  # notices of unwanted files that came (before their marks)
        self._unwanted = unwanted

    def watch_filesystem(self, path: str) -> None:
        self._mark(_FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, path)

    def read(self) -> list[ExecNotice]:
        """The pending notices; one the kernel could not give us is counted in `read_errors`
        (its notice is lost), never raised."""
        notices = []
        for _, fd, pid in self._read():
            try:
                st = os.fstat(fd)
                path = os.readlink(f"/proc/self/fd/{fd}")
                if self._unwanted(path):
                    self.unwanted_seen += 1
                    # Kept when the file is written (not its content is unwanted); a failure
                    # costs only the notices it would have spared.
                    with contextlib.suppress(FanotifyError):
                        self._ignore_file(fd, _FAN_MARK_IGNORED_SURV_MODIFY)
                    continue
                notices.append(ExecNotice(pid, path, st.st_dev, st.st_ino))
            except OSError:
                pass
            finally:
                os.close(fd)
        return notices


def answer_until(stopping: threading.Event, step: Callable[[], None], what: str,
                 give_up: Callable[[], None]) -> None:
    """Run `step` (answer what a permission group holds) until `stopping` is set. After five
    failures in a row nothing would answer the kernel any more: `give_up` closes the group, so
    the kernel lets everything held go ahead rather than hang whoever waits on it."""
    failures = 0
    while not stopping.is_set():
        try:
            step()
            failures = 0
        except Exception:
            failures += 1
            log.exception("answering held %s failed (%d in a row)", what, failures)
            if failures >= 5:
                log.critical("no longer holding %s: the permission group is closed", what)
                give_up()
                return
            stopping.wait(0.1)
