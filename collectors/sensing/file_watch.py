"""File changes in a container's root filesystem (docs/behaviour.md §6): fanotify with file ids
and names.

One notification group per container, with a filesystem mark on its overlay root (which needs
the overlay mounted with `index=on,nfs_export=on`). Each event names the directory (a file
handle) and the entry; the directory is opened by handle through the container's root and the
path read back container-relative. Reported: created and moved-in files, attribute changes,
deletions, and writes to files that came with the image (once per close). The engine judges the
drift; the collector only tells what happened, with the writer and the file's mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import struct
from dataclasses import dataclass

from collectors.kernel.fanotify import FAN_Q_OVERFLOW, METADATA, file_id_group, libc
from collectors.kernel.procfs import read_proc
from collectors.sensing.workloads import ContainerInfo
from schemas import FileEvent, FileOp

__all__ = ["FileWatch"]

_FAN_ATTRIB, _FAN_CLOSE_WRITE, _FAN_MOVED_TO, _FAN_CREATE, _FAN_DELETE = (
    0x04, 0x08, 0x80, 0x100, 0x200)
_MASK = _FAN_ATTRIB | _FAN_CLOSE_WRITE | _FAN_MOVED_TO | _FAN_CREATE | _FAN_DELETE
_O_PATH = 0o10000000
_INFO_DFID_NAME = 2
_MODES_KEPT = 65_536
_INFO_HEADER = struct.Struct("BBH")
_HANDLE_HEADER = struct.Struct("Ii")  # handle_bytes, handle_type

libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.open_by_handle_at.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class _Change:
    op: FileOp
    path: str
    pid: int


class FileWatch:
    """The file changes of one container's root filesystem."""

    def __init__(self, workload_id: str, info: ContainerInfo) -> None:
        self.workload_id = workload_id
        self.info = info
        self.root = f"/proc/{info.init_pid}/root"
        self.fd = file_id_group(self.root, _MASK)
        try:
            self.mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.close(self.fd)
            raise
        self._buffer = bytearray(64 * 1024)
        self._modes: dict[str, bool] = {}  # path -> executable, as last seen (bounded)
        self.overflows = 0

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[FileEvent]:
        try:
            n = os.readv(self.fd, [self._buffer])
        except BlockingIOError:
            return []
        view = memoryview(self._buffer)[:n]
        changes: list[_Change] = []
        offset = 0
        while offset + METADATA.size <= n:
            length, _, _, meta_len, mask, _, pid = METADATA.unpack_from(view, offset)
            if mask & FAN_Q_OVERFLOW:
                self.overflows += 1
            path = self._path(view[offset + meta_len:offset + length])
            if path is not None:
                changes += [_Change(op, path, pid) for op in _ops(mask)]
            offset += length
        return [e for c in changes if (e := self._event(c)) is not None]

    def _path(self, info: memoryview) -> str | None:
        """The container-relative path from a DFID_NAME record (directory handle + name)."""
        if len(info) < _INFO_HEADER.size:
            return None
        info_type, _, length = _INFO_HEADER.unpack_from(info, 0)
        if info_type != _INFO_DFID_NAME:
            return None
        handle_at = _INFO_HEADER.size + 8  # after the fsid
        handle_bytes, _ = _HANDLE_HEADER.unpack_from(info, handle_at)
        handle_end = handle_at + _HANDLE_HEADER.size + handle_bytes
        name = bytes(info[handle_end:length]).split(b"\0", 1)[0].decode(errors="replace")
        handle = ctypes.create_string_buffer(bytes(info[handle_at:handle_end]))
        dir_fd = libc.open_by_handle_at(self.mount_fd, handle, _O_PATH | os.O_CLOEXEC)
        if dir_fd < 0:
            return None  # the directory is gone already
        try:
            directory = os.readlink(f"/proc/self/fd/{dir_fd}")
        finally:
            os.close(dir_fd)
        return f"{directory.rstrip('/')}/{name}" if name and name != "." else None

    def _event(self, change: _Change) -> FileEvent | None:
        path = change.path
        from_image = self.info.in_image(path)
        try:
            st = os.lstat(f"{self.root}{path}")
        except OSError:
            if change.op is not FileOp.DELETE:
                return None  # gone again before we looked: its delete follows
            executable = False
        else:
            if not stat.S_ISREG(st.st_mode):
                return None  # FIFOs, sockets, links and devices carry no programs
            executable = bool(st.st_mode & 0o111)
        op = change.op
        if op is FileOp.MODIFY and not from_image:
            return None  # a new file's writes: its create (and chmod) tell the drift
        was = self._modes.get(path)
        if was is None:
            was = _image_executable(self.info, path)
        self._modes.pop(path, None)
        if op is not FileOp.DELETE:
            self._modes[path] = executable
            if len(self._modes) > _MODES_KEPT:  # forget the oldest: the image tells for them
                del self._modes[next(iter(self._modes))]
        proc = read_proc(change.pid) if change.pid > 0 else None
        return FileEvent(
            workload_id=self.workload_id, op=op, path=path, executable=executable,
            was_executable=was, from_image=from_image, in_container_fs=True,
            pid=change.pid, proc_name=proc.comm if proc else "",
            proc_path=proc.exe if proc else "")

    def close(self) -> None:
        for fd in (self.fd, self.mount_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _ops(mask: int) -> list[FileOp]:
    ops = []
    if mask & (_FAN_CREATE | _FAN_MOVED_TO):
        ops.append(FileOp.CREATE)
    if mask & _FAN_CLOSE_WRITE:
        ops.append(FileOp.MODIFY)
    if mask & _FAN_ATTRIB:
        ops.append(FileOp.ATTRIB)
    if mask & _FAN_DELETE:
        ops.append(FileOp.DELETE)
    return ops


def _image_executable(info: ContainerInfo, path: str) -> bool:
    for lower in info.lowerdirs:
        try:
            st = os.lstat(f"{lower}{path}")
        except OSError:
            continue
        return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)
    return False
