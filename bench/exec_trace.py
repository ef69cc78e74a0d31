"""The kernel's own timing of each exec, from tracefs, for bench/collector.py.

An exec is held between the `execve` system call's entry and the kernel's start of the new
program (the `sched_prepare_exec` tracepoint, in `begin_new_exec`): the file is opened there, and
a fanotify permission group holds that open until it answers. Timing that window per exec, and
per file, measures what a hold adds to an exec without what follows it: the program's run, its
exit and its parent's wake-up, which on two busy cores move an exec's spawn-to-exit p99 by
hundreds of microseconds from one run to the next.

Both tracepoints fire in the exec'ing task, so the pair of one pid is one exec. The clock is
`mono` (the same across CPUs: a task may move to another CPU while it waits), with microsecond
resolution.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import TracebackType

__all__ = ["ExecTrace"]

TRACEFS = Path("/sys/kernel/tracing")
_EVENTS = ("syscalls/sys_enter_execve", "sched/sched_prepare_exec")
# "<comm>-<pid> [cpu] <flags> <seconds>: <event>(...)" or "...: <event>: ..."
_LINE = re.compile(r"-(\d+)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): (\w+)[:(](.*)")
_FILENAME = re.compile(r"filename=(\S+)")


class ExecTrace:
    """While entered, records every exec on the host; `durations` then gives each file's exec
    times in order. Restores the tracing settings it changed on exit."""

    def __init__(self, buffer_kb: int = 32768) -> None:
        self.buffer_kb = buffer_kb
        self._saved: dict[str, str] = {}
        self._text = ""

    def _write(self, name: str, value: str) -> None:
        (TRACEFS / name).write_text(value)

    def __enter__(self) -> ExecTrace:
        if not (TRACEFS / "trace").exists():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
        clock = (TRACEFS / "trace_clock").read_text()
        self._saved = {"trace_clock": re.search(r"\[(\w+)\]", clock)[1],  # type: ignore[index]
                       "buffer_size_kb": (TRACEFS / "buffer_size_kb").read_text().split()[0],
                       "tracing_on": (TRACEFS / "tracing_on").read_text().strip()}
        for event in _EVENTS:
            self._saved[f"events/{event}/enable"] = (
                TRACEFS / "events" / event / "enable").read_text().strip()
        self._write("tracing_on", "0")
        self._write("trace_clock", "mono")
        self._write("buffer_size_kb", str(self.buffer_kb))
        self._write("trace", "")
        for event in _EVENTS:
            self._write(f"events/{event}/enable", "1")
        self._write("tracing_on", "1")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._write("tracing_on", "0")
        try:
            self._text = (TRACEFS / "trace").read_text()
            lost = sum(int(m[1]) for cpu in (TRACEFS / "per_cpu").iterdir()
                       for m in re.finditer(r"^overrun: (\d+)", (cpu / "stats").read_text(),
                                            re.M))
        finally:
            self._write("trace", "")
            for name, value in self._saved.items():
                self._write(name, value)
        if lost and kind is None:
            raise RuntimeError(f"the trace buffer overflowed ({lost} events lost): give "
                               f"ExecTrace a larger buffer_kb than {self.buffer_kb}")

    def durations(self) -> dict[str, list[int]]:
        """Each exec'd file's exec times (ns, whole us), from the execve entry to the new program's
        start, as the file was named to execve."""
        entered: dict[int, float] = {}
        out: dict[str, list[int]] = {}
        for line in self._text.splitlines():
            m = _LINE.search(line)
            if m is None:
                continue
            pid, seconds, event = int(m[1]), float(m[2]), m[3]
            if event == "sys_execve":
                entered[pid] = seconds
            elif event == "sched_prepare_exec" and pid in entered:
                name = _FILENAME.search(m[4])
                if name is not None:
                    took_us = round((seconds - entered.pop(pid)) * 1e6)
                    out.setdefault(name[1], []).append(took_us * 1000)
        return out
