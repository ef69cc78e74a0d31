"""Reverse-shell facts (docs/behaviour.md §9.2): a new process's stdin and stdout on one TCP socket.

A new process is inspected a few times over its first seconds. Only a process whose fd 0 and
fd 1 are the same socket is reported (the engine marks the first sighting and confirms on the
second); the socket's peer comes from the process's own network namespace
(`/proc/<pid>/net/tcp` and `tcp6`), so containers with their own network are read right.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import time
from dataclasses import dataclass, field

from collectors.kernel.procfs import read_stat
from schemas import ExecEvent, StdioEvent

__all__ = ["StdioInspector", "socket_peer", "stdio_targets"]


def stdio_targets(pid: int) -> tuple[str, str] | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/0"), os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None


def _address(hex_addr: str) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    text = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{text}:{int(port, 16)}"


def socket_peer(pid: int, inode: str) -> str:
    """`address:port` of the remote end of TCP socket `inode`, "" when it has none."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh, None)
                for line in fh:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] == inode:
                        peer = _address(cols[2])
                        return "" if peer.endswith(":0") else peer
        except OSError:
            continue
    return ""


@dataclass(order=True)
class _Due:
    at: float
    pid: int = field(compare=False)
    start_time: int = field(compare=False)
    left: int = field(compare=False)
    sightings: int = field(compare=False)
    event: ExecEvent = field(compare=False)


class StdioInspector:
    """Schedules and runs the stdio inspections of new processes."""

    def __init__(self, inspections: int = 5, interval_s: float = 0.5) -> None:
        self.inspections = inspections
        self.interval_s = interval_s
        self._due: list[_Due] = []

    def watch(self, event: ExecEvent, now: float | None = None) -> None:
        if self.inspections and event.name != "sshd":
            now = time.monotonic() if now is None else now
            heapq.heappush(self._due, _Due(now + 0.05, event.pid, event.start_time,
                                           self.inspections, 0, event))

    def next_due(self) -> float | None:
        return self._due[0].at if self._due else None

    def run_due(self, now: float | None = None) -> list[StdioEvent]:
        """Inspect every process whose turn has come; the tunnel-like ones are returned."""
        now = time.monotonic() if now is None else now
        found: list[StdioEvent] = []
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            targets = stdio_targets(due.pid)
            if targets is None or not _same_process(due.pid, due.start_time):
                continue  # gone
            fd0, fd1 = targets
            if fd0 == fd1 and fd0.startswith("socket:[") and fd0 != "socket:[0]":
                ev = due.event
                found.append(StdioEvent(
                    workload_id=ev.workload_id, pid=ev.pid, name=ev.name, path=ev.path,
                    fd0=fd0, fd1=fd1, peer=socket_peer(due.pid, fd0[8:-1]),
                    start_time=ev.start_time, ruid=ev.ruid, euid=ev.euid, user=ev.user,
                    parent_name=ev.parent_name, parent_path=ev.parent_path, argv=ev.argv))
                due.sightings += 1
                if due.sightings >= 2:
                    continue  # seen twice: the engine has what it needs to confirm
            due.left -= 1
            if due.left > 0:
                due.at = now + self.interval_s
                heapq.heappush(self._due, due)
        return found

    def __len__(self) -> int:
        return len(self._due)


def _same_process(pid: int, start_time: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.start_time == start_time
