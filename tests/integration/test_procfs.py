"""The collector's /proc readers on the real kernel: what they read is what the file holds,
long files included, and a vanished process reads as None."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.kernel.procfs import (
    ArgvLimits,
    read_cgroup,
    read_exe,
    read_pid_ns,
    read_proc,
    read_stat,
)


def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_read_proc_matches_what_proc_says() -> None:
    pid = os.getpid()
    proc = read_proc(pid)
    assert proc is not None
    assert proc.ppid == os.getppid()
    assert proc.pgid == os.getpgid(0) and proc.sid == os.getsid(0)
    assert proc.exe == os.path.realpath(sys.executable)
    assert proc.ruid == os.getuid() and proc.euid == os.geteuid()
    assert proc.pid_ns == os.readlink(f"/proc/{pid}/ns/pid")
    assert proc.cgroup == Path(f"/proc/{pid}/cgroup").read_text()
    assert proc.argv == tuple(Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0"))
    # what sensing reads for every exec, and the namespace only for a container's
    without_ns = read_proc(pid, with_pid_ns=False)
    assert without_ns is not None and without_ns.pid_ns == ""
    assert without_ns.exe == proc.exe and without_ns.cgroup == proc.cgroup
    assert read_pid_ns(pid) == proc.pid_ns and read_pid_ns(_gone_pid()) == ""


def test_a_command_line_longer_than_one_read_is_read_whole() -> None:
    args = [f"argument-{i:05d}-" + "x" * 40 for i in range(1000)]  # ~52 KB of argv
    argv = ("sh", "-c", "sleep 30; :", "sh", *args)  # a shell that keeps its arguments
    child = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 5
        # caps above this argv: it is read whole, over several reads
        roomy = ArgvLimits(max_args=2000, max_total_bytes=128 * 1024)
        proc = read_proc(child.pid, limits=roomy)
        # Until the child has exec'd the shell: the kernel names the process before it sets
        # up the new program's arguments.
        while (proc is None or proc.argv != argv) and time.monotonic() < deadline:
            time.sleep(0.01)
            proc = read_proc(child.pid, limits=roomy)
        assert proc is not None
        assert proc.comm == "sh"
        assert proc.argv == argv
        capped = read_proc(child.pid)  # the defaults: 256 arguments at most, marked so
        assert capped is not None and capped.truncated
        assert capped.argv == argv[:256]
    finally:
        child.kill()
        child.wait()


def test_a_gone_process_reads_as_none() -> None:
    pid = _gone_pid()
    assert read_proc(pid) is None
    assert read_stat(pid) is None
    assert read_cgroup(pid) is None
    assert read_exe(pid) == ""


def test_a_gone_execs_parent_is_read_whole_once_while_it_stays_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sensor._parent: a parent starting many short programs is read whole once; its stat is
    checked each time, and a new name or `forget` (its uid change, exec or exit) reads it again."""
    from collectors.sensing import sensor as sensing
    from collectors.sensing.workloads import WorkloadResolver

    whole_reads: list[int] = []

    def counted(pid: int, root: str = "/proc", **options: Any) -> object:
        whole_reads.append(pid)
        return read_proc(pid, root, **options)

    monkeypatch.setattr(sensing, "read_proc", counted)
    sensor = sensing.Sensor(WorkloadResolver("node-1"))
    me = os.getpid()
    first = sensor._parent(me)
    assert first is not None and sensor._parent(me) is first
    assert whole_reads == [me]
    sensor.forget(me)
    assert sensor._parent(me) is not None and whole_reads == [me, me]
    comm = Path("/proc/self/comm").read_text().strip()
    try:
        Path("/proc/self/comm").write_text("renamed")
        renamed = sensor._parent(me)
        assert renamed is not None and renamed.comm == "renamed"
        assert whole_reads == [me, me, me]
    finally:
        Path("/proc/self/comm").write_text(comm)
    assert sensor._parent(_gone_pid()) is None
