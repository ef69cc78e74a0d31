"""While execs are held, the thread answering them shares one CPU with the sensing thread and
runs SCHED_FIFO above it.

A held exec's answer needs the GIL, which the busy sensing thread holds most of the time. On
different CPUs the sensing thread drops the GIL at its next system call and takes it back before
the answering thread, woken on the other CPU, gets there; the hand-over then waits for the switch
interval. On one CPU, with the answering thread at a real-time priority, the kernel runs it the
moment it is woken: when the fanotify event arrives, and again when the sensing thread lets the
GIL go at its next /proc read. Measured on the 2-core test VM (bench/collector.py), the
collector's own p99 for a cached answer went from 1-5 ms to <= 200 us.

Nothing changes while no exec is held or when told `off`, and a collector without
CAP_SYS_NICE keeps the default scheduling and says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Literal

__all__ = ["SharedCpu", "choose_cpu"]

log = logging.getLogger("procwarden.collector.shared_cpu")

# Above every SCHED_OTHER thread, and below the kernel's own real-time threads (irq threads run
# at 50): only the GIL hand-over needs it.
_PRIORITY = 1


def choose_cpu(setting: int | Literal["auto", "off"], allowed: set[int]) -> int | None:
    """The CPU to share, from the setting and the CPUs the collector may run on; None: leave
    scheduling alone. `auto` takes the highest allowed CPU (CPU 0 often takes more of the
    interrupts)."""
    if setting == "off" or not allowed:
        return None
    if setting == "auto":
        return max(allowed)
    if setting not in allowed:
        raise ValueError(f"CPU {setting} is not one this collector may run on "
                         f"(allowed: {sorted(allowed)})")
    return setting


class SharedCpu:
    """Created by the sensing thread; `engage` and `release` are called by the answering
    thread, which changes its own scheduling and the sensing thread's affinity."""

    def __init__(self, setting: int | Literal["auto", "off"]) -> None:
        self.setting = setting
        self.sensing_tid = threading.get_native_id()
        self.cpu: int | None = None  # while engaged
        self._affinity: dict[int, set[int]] = {}  # thread id -> its affinity before
        self._failed = False

    def engage(self) -> None:
        if self.cpu is not None or self._failed or self.setting == "off":
            return
        tid = threading.get_native_id()
        try:
            cpu = choose_cpu(self.setting, os.sched_getaffinity(self.sensing_tid))
            if cpu is None:
                return
            for thread in (self.sensing_tid, tid):
                self._affinity[thread] = os.sched_getaffinity(thread)
                os.sched_setaffinity(thread, {cpu})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_PRIORITY))
        except (OSError, ValueError) as exc:
            self._failed = True  # said once; the next engage would fail the same way
            self._restore()
            log.warning("held execs are answered with default scheduling: %s", exc)
            return
        self.cpu = cpu
        log.info("held execs are answered on CPU %d, shared with the sensing thread "
                 "(SCHED_FIFO)", cpu)

    def release(self) -> None:
        if self.cpu is None:
            return
        self.cpu = None
        self._restore()
        log.info("no exec is held: default scheduling again")

    def _restore(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:
            log.warning("could not restore the answering thread's scheduling: %s", exc)
        for thread, cpus in self._affinity.items():
            with contextlib.suppress(OSError):  # that thread has ended
                os.sched_setaffinity(thread, cpus)
        self._affinity.clear()
