"""The Linux process connector: fork, exec, uid and exit events for every process of the host.

Read with a plain netlink socket. pyroute2's `ProcEventSocket` runs an asyncio loop for each
receive, which cost 40% of the collector's CPU at 1,000 execs/s, and stays failed after the
kernel reports an overrun; the connector's messages are fixed C structs (linux/cn_proc.h), so a
non-blocking socket and `struct` do it, inside the collector's own select loop. Each exec comes
with three datagrams (fork, exec, exit): they are taken up to 64 at a time with one
`recvmmsg`, which Python's socket module lacks, not with a system call each.

A listener says which kinds of event it reads (`events`), and since Linux 6.6 the kernel sends
it nothing else: the exec answerer, at a real-time priority, is woken only by the forks and
exits its lineage needs, not by every exec and rename of the host as well; the collector is not
sent the host's session, group and ptrace changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["COMM", "EXEC", "EXIT", "FORK", "UID", "ProcConnector", "ProcEvent", "kernel_filters"]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
_SO_RCVBUFFORCE = 33
_FILTERS_SINCE = (6, 6)  # struct proc_input: a listener's own choice of events

FORK, EXEC, UID, COMM, EXIT = 0x1, 0x2, 0x4, 0x200, 0x80000000

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR = struct.Struct("=IIII")
_TWO = struct.Struct("=II")
_HEAD = _NLMSG.size + _CN_MSG.size + _EVENT.size
_NLMSG_DONE = 3
_LEN = struct.Struct("=I")


class ProcEvent(NamedTuple):
    what: int
    pid: int  # the thread (fork: the new one)
    tgid: int  # the process (fork: the new one's)
    a: int = 0  # fork: the parent's tgid; uid: ruid; exit: exit code
    b: int = 0  # uid: euid; exit: exit signal


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_MSG_DONTWAIT = 0x40
_DATAGRAM = 256  # a connector message is under 100 bytes


def _recvmmsg() -> Callable[..., int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    call = libc.recvmmsg
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                     ctypes.c_void_p]
    call.restype = ctypes.c_int
    return call


def kernel_filters(release: str | None = None) -> bool:
    """Whether this kernel takes a listener's choice of events. An older one drops a listen
    message of the newer size without a word, and would send nothing at all."""
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= _FILTERS_SINCE
    except (IndexError, ValueError):
        return False


class ProcConnector:
    def __init__(self, rcvbuf: int = 16 * 2**20, batch: int = 64, events: int | None = None
                 ) -> None:
        """`events`: the kinds wanted (FORK | EXIT, say); None, or a kernel older than 6.6:
        every kind (`read` returns them all; a caller skips what it does not use)."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            # Root may go past net.core.rmem_max: a big buffer rides out bursts of execs.
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, CN_IDX_PROC))
        payload = (struct.pack("=II", PROC_CN_MCAST_LISTEN, events)
                   if events is not None and kernel_filters()
                   else struct.pack("=I", PROC_CN_MCAST_LISTEN))
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn)
        self.sock.setblocking(False)
        self.overruns = 0
        self.drained = False  # the last read emptied the socket
        self._fd = self.sock.fileno()
        self._recvmmsg = _recvmmsg()
        self._batch = batch
        self._data = ctypes.create_string_buffer(batch * _DATAGRAM)
        self._view = memoryview(self._data).cast("B")
        self._iovecs = (_IoVec * batch)()
        self._msgs = (_MMsgHdr * batch)()
        base = ctypes.addressof(self._data)
        for i in range(batch):
            self._iovecs[i].base = base + i * _DATAGRAM
            self._iovecs[i].len = _DATAGRAM
            self._msgs[i].hdr.iov = ctypes.pointer(self._iovecs[i])
            self._msgs[i].hdr.iovlen = 1
        self._msgs_at = ctypes.addressof(self._msgs)
        self._len_at = _MMsgHdr.len.offset
        self._lens = memoryview(self._msgs).cast("B")

    def fileno(self) -> int:
        return self._fd

    def read(self, limit: int = 4096) -> list[ProcEvent]:
        """The events waiting now (about `limit` datagrams at most); counts kernel overruns."""
        events: list[ProcEvent] = []
        self.drained = False
        view, size, stride, len_at = self._view, _DATAGRAM, ctypes.sizeof(_MMsgHdr), self._len_at
        taken = 0
        while taken < limit:
            n = self._recvmmsg(self._fd, self._msgs_at, self._batch, _MSG_DONTWAIT, None)
            if n < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.drained = True
                    break
                if err == errno.ENOBUFS:  # the kernel dropped events: say so
                    self.overruns += 1
                    taken += 1  # (a socket overflowing without end still ends this read)
                    continue
                raise OSError(err, os.strerror(err))
            taken += n
            for i in range(n):
                length = _LEN.unpack_from(self._lens, i * stride + len_at)[0]
                if length < _HEAD + 8:
                    continue
                at = i * size
                what = _EVENT.unpack_from(view, at + _NLMSG.size + _CN_MSG.size)[0]
                if what == FORK:
                    _, parent_tgid, child_pid, child_tgid = _FOUR.unpack_from(view, at + _HEAD)
                    events.append(ProcEvent(FORK, child_pid, child_tgid, parent_tgid))
                elif what == COMM:  # (its new name is not needed: /proc is read again)
                    pid, tgid = _TWO.unpack_from(view, at + _HEAD)
                    events.append(ProcEvent(COMM, pid, tgid))
                elif what in (EXEC, UID, EXIT):
                    if length >= _HEAD + 16:
                        pid, tgid, a, b = _FOUR.unpack_from(view, at + _HEAD)
                    else:  # the fields it lacks are zero, not what an older message left
                        pid, tgid, a, b = _FOUR.unpack(
                            bytes(view[at + _HEAD:at + length]).ljust(16, b"\0"))
                    events.append(ProcEvent(what, pid, tgid, a, b))
            if n < self._batch:
                # fewer than asked: the socket is empty now (one more call would say EAGAIN)
                self.drained = True
                break
        return events

    def close(self) -> None:
        self.sock.close()
