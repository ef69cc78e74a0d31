"""Which container a held exec comes from, and whether it descends from the container's root,
known from the process connector instead of read from /proc at each exec.

A process's creator is in the connector's fork event, queued by the kernel during fork(), so
before the child can exec; its exit is queued before its pid can be reused. Draining the
connector before taking up a held exec therefore tells who made the caller. A child starts in its
creator's cgroup and descends from the container's root exactly when its creator does (or is
it), so the placement of a process placed once by reading /proc carries over to every process
it makes, with no read.

Only container processes are placed. A host process is never taken as its children's
placement: `runc exec` (and `kubectl exec` through it) forks on the host and moves the child into
the container's cgroup before the child execs, so a child of a host process is always read.
A lost connector message (an overrun) forgets everything: from then on, reads again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from collectors.kernel.connector import EXIT, FORK, ProcEvent

__all__ = ["Lineage", "Placement"]


class Placement(NamedTuple):
    container: str
    family: bool  # descends from the container's root process (or is it)


class Lineage:
    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._creators: dict[int, int] = {}  # pid -> the pid that forked it
        self._placed: dict[int, Placement] = {}

    def __len__(self) -> int:
        return len(self._placed)

    def feed(self, events: Iterable[ProcEvent]) -> None:
        """The connector's events, in the order it sent them."""
        creators, placed = self._creators, self._placed
        for ev in events:
            if ev.pid != ev.tgid:
                continue  # a thread: its process's lineage is unchanged
            if ev.what == FORK:
                creators[ev.tgid] = ev.a
                if len(creators) > self._limit:
                    creators.pop(next(iter(creators)))
            elif ev.what == EXIT:
                creators.pop(ev.tgid, None)
                placed.pop(ev.tgid, None)

    @property
    def limit(self) -> int:
        return self._limit

    def tables(self) -> tuple[dict[int, int], dict[int, Placement]]:
        """(creators, placements) themselves, for the exec answerer's compiled wait
        (`fast_answer.c`), which feeds and reads them in place by the same rules."""
        return self._creators, self._placed

    def forget(self) -> None:
        """Connector messages were lost: nothing known can be trusted."""
        self._creators.clear()
        self._placed.clear()

    def place(self, pid: int, placement: Placement) -> None:
        """`pid` was read from /proc to be a process of `placement.container`."""
        self._placed[pid] = placement
        if len(self._placed) > self._limit:
            self._placed.pop(next(iter(self._placed)))

    def placement(self, pid: int) -> Placement | None:
        """Where `pid` is, if it or its creator was placed; None: read it."""
        known = self._placed.get(pid)
        if known is None:
            creator = self._creators.get(pid)
            if creator is None:
                return None
            known = self._placed.get(creator)
            if known is None:
                return None
            self.place(pid, known)  # its own children need not look further
        return known
