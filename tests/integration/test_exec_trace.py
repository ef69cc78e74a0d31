"""The collector bench's exec timing from the kernel's trace (bench/exec_trace.py), on the real
kernel: one duration per exec that started, under the name it was run by, and the tracing
settings left as they were."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.exec_trace import TRACEFS, ExecTrace
from tests.integration.streamkit import spawn_true


def _settings() -> dict[str, str]:
    return {name: (TRACEFS / name).read_text() for name in (
        "trace_clock", "buffer_size_kb", "tracing_on",
        "events/syscalls/sys_enter_execve/enable", "events/sched/sched_prepare_exec/enable")}


def test_each_exec_is_timed_under_the_name_it_was_run_by(tmp_path: Path) -> None:
    with ExecTrace(buffer_kb=1024):
        pass  # mounts tracefs where it is not yet
    before = _settings()
    with ExecTrace(buffer_kb=1024) as trace:
        spawn_true(7)
        with pytest.raises(FileNotFoundError):  # entered execve, never started a program
            os.posix_spawn(str(tmp_path / "missing"), ["missing"], {})
        spawn_true(1)
    durations = trace.durations()
    assert len(durations["/usr/bin/true"]) == 8
    assert all(0 < ns < 1_000_000_000 for ns in durations["/usr/bin/true"])
    assert str(tmp_path / "missing") not in durations
    assert _settings() == before
