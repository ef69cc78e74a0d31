"""While execs are held, the process answering them runs SCHED_FIFO: the kernel runs it the
moment a held exec wakes it, ahead of every ordinary thread on that CPU (Kafka's, the stream
worker's, the collector's own sensing). Measured on the 2-core test VM (bench/collector.py): a
bare answerer's p99 added latency halved against the default priority.

Nothing changes while no exec is held or when told not to, and a process without CAP_SYS_NICE
keeps the default scheduling and says so.
"""

from __future__ import annotations

import logging
import os

__all__ = ["PRIORITY", "Realtime"]

log = logging.getLogger("procwarden.collector.realtime")

# Above every SCHED_OTHER thread, and below the kernel's own real-time threads (irq threads run
# at 50): an answer is short, and nothing of the kernel's must wait on it.
PRIORITY = 1


class Realtime:
    """The calling process's (single thread's) scheduling, switched by `engage`/`release`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.engaged = False
        self._failed = False

    def engage(self) -> None:
        if self.engaged or self._failed or not self.enabled:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
        except OSError as exc:
            self._failed = True  # said once; the next engage would fail the same way
            log.warning("held execs are answered at the default priority: %s", exc)
            return
        self.engaged = True
        log.info("held execs are answered at a real-time priority (SCHED_FIFO %d)", PRIORITY)

    def release(self) -> None:
        if not self.engaged:
            return
        self.engaged = False
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            log.warning("could not restore the default scheduling: %s", exc)
            return
        log.info("no exec is held: default scheduling again")
