"""fanotify permission events for execs: the kernel holds an exec until we answer it.

A thin binding over the two system calls (libc has them; Python's os module does not) and the
event records. One group watches the root mounts of the containers whose execs must be held;
each event carries an open descriptor of the executable and the pid of the calling process,
and the exec waits until `answer` writes allow or deny for that descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

__all__ = ["ExecPermission", "FanotifyError", "PermissionGroup"]

_FAN_CLOEXEC = 0x01
_FAN_NONBLOCK = 0x02
_FAN_CLASS_CONTENT = 0x04
_FAN_OPEN_EXEC_PERM = 0x0004_0000
_FAN_MARK_ADD = 0x01
_FAN_MARK_REMOVE = 0x02
_FAN_MARK_MOUNT = 0x10
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


@dataclass(frozen=True, slots=True)
class ExecPermission:
    """One held exec: answer it exactly once, then it is closed."""

    fd: int  # the executable, opened by the kernel for us
    pid: int  # the process calling execve (still running its old program)

    def path(self) -> str:
        """The executable's path as seen from the mount it was reached through."""
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return ""


class PermissionGroup:
    """A fanotify group for exec permission events on whole mounts."""

    def __init__(self) -> None:
        self.fd = _check(_libc.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC | _FAN_NONBLOCK,
                                             os.O_RDONLY | _O_LARGEFILE | os.O_CLOEXEC),
                         "fanotify_init")
        self._buffer = bytearray(64 * 1024)

    def watch(self, mount: str) -> None:
        """Hold every exec of a file reached through `mount` (a container's root)."""
        _check(_libc.fanotify_mark(self.fd, _FAN_MARK_ADD | _FAN_MARK_MOUNT, _FAN_OPEN_EXEC_PERM,
                                   _AT_FDCWD, mount.encode()), f"fanotify_mark {mount}")

    def unwatch(self, mount: str) -> None:
        # A mount gone with its container took its mark with it.
        with contextlib.suppress(FanotifyError):
            _check(_libc.fanotify_mark(self.fd, _FAN_MARK_REMOVE | _FAN_MARK_MOUNT,
                                       _FAN_OPEN_EXEC_PERM, _AT_FDCWD, mount.encode()),
                   f"fanotify_mark remove {mount}")

    def read(self) -> list[ExecPermission]:
        """The pending permission events (none when nothing waits: the group is non-blocking)."""
        try:
            n = os.readv(self.fd, [self._buffer])
        except BlockingIOError:
            return []
        events: list[ExecPermission] = []
        view = memoryview(self._buffer)[:n]
        offset = 0
        while offset + _METADATA.size <= n:
            length, version, _, _, mask, fd, pid = _METADATA.unpack_from(view, offset)
            if version != _METADATA_VERSION or length < _METADATA.size:
                raise FanotifyError(0, f"unexpected fanotify record (version {version})")
            if fd >= 0:
                if mask & _FAN_OPEN_EXEC_PERM:
                    events.append(ExecPermission(fd, pid))
                else:
                    os.close(fd)
            offset += length
        return events

    def answer(self, event: ExecPermission, allow: bool) -> None:
        try:
            os.write(self.fd, _RESPONSE.pack(event.fd, _FAN_ALLOW if allow else _FAN_DENY))
        finally:
            os.close(event.fd)

    def close(self) -> None:
        # Closing the group lets every exec still held go ahead: the kernel allows them.
        os.close(self.fd)
