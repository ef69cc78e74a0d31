"""The Linux process connector: fork, exec, uid and exit events for every process of the host.

Read with a plain netlink socket. pyroute2's `ProcEventSocket` runs an asyncio loop for each
receive, which cost 40% of the collector's CPU at 1,000 execs/s, and stays failed after the
kernel reports an overrun; the connector's messages are fixed C structs (linux/cn_proc.h), so a
non-blocking socket, one recv per datagram and `struct` do it, inside the collector's own
select loop.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from collectors import gil_held_io

__all__ = ["EXEC", "EXIT", "FORK", "UID", "ProcConnector", "ProcEvent"]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
_SO_RCVBUFFORCE = 33

FORK, EXEC, UID, EXIT = 0x1, 0x2, 0x4, 0x80000000

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FOUR = struct.Struct("=IIII")
_HEAD = _NLMSG.size + _CN_MSG.size + _EVENT.size
_NLMSG_DONE = 3


class ProcEvent(NamedTuple):
    what: int
    pid: int  # the thread (fork: the new one)
    tgid: int  # the process (fork: the new one's)
    a: int = 0  # fork: the parent's tgid; uid: ruid; exit: exit code
    b: int = 0  # uid: euid; exit: exit signal


class ProcConnector:
    def __init__(self, rcvbuf: int = 16 * 2**20, keep_gil: bool = False) -> None:
        """keep_gil: read through `gil_held_io` (for the held-exec thread, which must not hand
        the GIL to the sensing thread at each datagram)."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            # Root may go past net.core.rmem_max: a big buffer rides out bursts of execs.
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, CN_IDX_PROC))
        payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn)
        self.sock.setblocking(False)
        self.overruns = 0
        self.drained = False  # the last read emptied the socket
        self._recv: Callable[[int], bytes] = self.sock.recv
        if keep_gil:
            self._buffer = gil_held_io.Buffer(256)
            self._recv = self._recv_keeping_gil

    def fileno(self) -> int:
        return self.sock.fileno()

    def _recv_keeping_gil(self, size: int) -> bytes:
        return self._buffer.bytes(gil_held_io.read_into(self.sock.fileno(), self._buffer))

    def read(self, limit: int = 4096) -> list[ProcEvent]:
        """The events waiting now (at most `limit` datagrams); counts kernel overruns."""
        events: list[ProcEvent] = []
        self.drained = False
        for _ in range(limit):
            try:
                data = self._recv(256)
            except BlockingIOError:
                self.drained = True
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: say so
                    self.overruns += 1
                    continue
                raise
            if len(data) < _HEAD + 8:
                continue
            what = _EVENT.unpack_from(data, _NLMSG.size + _CN_MSG.size)[0]
            if what == FORK:
                _, parent_tgid, child_pid, child_tgid = _FOUR.unpack_from(data, _HEAD)
                events.append(ProcEvent(FORK, child_pid, child_tgid, parent_tgid))
            elif what in (EXEC, UID, EXIT):
                pid, tgid, a, b = _FOUR.unpack_from(data.ljust(_HEAD + 16, b"\0"), _HEAD)
                events.append(ProcEvent(what, pid, tgid, a, b))
        return events

    def close(self) -> None:
        self.sock.close()
