"""Small system calls that keep the GIL, for the held-exec path.

Each `os.read`, `os.readlink` or `os.stat` lets the GIL go, and getting it back can mean waiting
for the busy sensing thread to hand it over (up to the switch interval). A cached answer needs
about a dozen such calls, each a few microseconds in the kernel: made through `ctypes.PyDLL`,
which keeps the GIL, the answer is computed in one stretch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["Buffer", "close", "exists", "read_into", "read_small", "readlink", "write"]

_libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_open = _libc.open
_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
_open.restype = ctypes.c_int
_read = _libc.read
_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_read.restype = ctypes.c_ssize_t
_write = _libc.write
_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_write.restype = ctypes.c_ssize_t
_close = _libc.close
_close.argtypes = [ctypes.c_int]
_close.restype = ctypes.c_int
_readlink = _libc.readlink
_readlink.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_readlink.restype = ctypes.c_ssize_t
_access = _libc.access
_access.argtypes = [ctypes.c_char_p, ctypes.c_int]
_access.restype = ctypes.c_int

_O_RDONLY_CLOEXEC = 0o2000000
_F_OK = 0
_SIZE = 4096


def read_small(path: str) -> bytes | None:
    """A file of less than 4 KiB (a /proc stat or cgroup file); None when it cannot be read or
    is longer."""
    fd = _open(path.encode(), _O_RDONLY_CLOEXEC)
    if fd < 0:
        return None
    buffer = ctypes.create_string_buffer(_SIZE)  # one per call: callers may be on any thread
    try:
        n = _read(fd, buffer, _SIZE)
        return ctypes.string_at(buffer, n) if 0 <= n < _SIZE else None
    finally:
        _close(fd)


class Buffer:
    """A buffer for `read_into`, owned by one thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.c = ctypes.create_string_buffer(size)

    def bytes(self, n: int) -> bytes:
        return ctypes.string_at(self.c, n)


def read_into(fd: int, buffer: Buffer) -> int:
    """One read of a non-blocking descriptor (a fanotify group, a netlink datagram) into
    `buffer`: the number of bytes; BlockingIOError when nothing waits, OSError on failure."""
    n = _read(fd, buffer.c, buffer.size)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))  # EAGAIN makes it a BlockingIOError
    return int(n)


def readlink(path: str) -> str | None:
    buffer = ctypes.create_string_buffer(_SIZE)
    n = _readlink(path.encode(), buffer, _SIZE)
    if n < 0 or n >= _SIZE:
        return None
    return ctypes.string_at(buffer, n).decode(errors="surrogateescape")


def exists(path: str) -> bool:
    return bool(_access(path.encode(), _F_OK) == 0)


def write(fd: int, data: bytes) -> None:
    """One write of all of `data` (a fanotify answer); OSError when it fails."""
    if _write(fd, data, len(data)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def close(fd: int) -> None:
    _close(fd)
