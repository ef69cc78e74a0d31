"""The process name the collector reports: the kernel's comm, except the transient "exe" of a
BusyBox applet re-executed through /proc/self/exe; and whether a read process still runs it."""

from __future__ import annotations

from collectors.kernel.procfs import ProcInfo, ProcStat, process_name
from collectors.sensing.sensor import still_the_exec_read

BUSYBOX = "/var/lib/runc/rootfs/bin/busybox"


def test_a_busybox_re_exec_is_named_after_its_applet() -> None:
    assert process_name("exe", BUSYBOX, ("sleep", "1")) == "sleep"
    assert process_name("exe", BUSYBOX, ("/bin/cat", "/etc/passwd")) == "cat"


def test_the_name_is_cut_like_the_kernels() -> None:
    assert process_name("exe", BUSYBOX, ("a-very-long-applet-name",)) == "a-very-long-app"


def test_any_other_process_keeps_its_comm() -> None:
    assert process_name("sleep", BUSYBOX, ("sleep", "1")) == "sleep"
    assert process_name("exe", "/usr/sbin/runc", ("runc", "init")) == "exe"  # not BusyBox
    assert process_name("exe", BUSYBOX, ()) == "exe"  # no argv to name it by
    assert process_name("nginx", "/usr/sbin/nginx", ("nginx: worker",)) == "nginx"


def _proc(comm: str, exe: str, argv: tuple[str, ...]) -> ProcInfo:
    return ProcInfo(pid=7, ppid=1, pgid=7, sid=1, start_time=500, comm=comm, exe=exe,
                    argv=argv, ruid=0, euid=0, pid_ns="pid:[1]", cgroup="")


def _stat(comm: str, state: str = "S", start_time: int = 500) -> ProcStat:
    return ProcStat(ppid=1, start_time=start_time, comm=comm, state=state)


def test_a_read_across_a_second_exec_is_not_taken_for_one_program() -> None:
    # A BusyBox shell re-executed itself ("exe") and then exec'd a program before the collector
    # had read all: the name is the shell's, the file the program's.
    torn = _proc("exe", "/dev/exec-timer", ("/dev/exec-timer", "3"))
    assert not still_the_exec_read(torn, _stat("exec-timer"))
    assert not still_the_exec_read(_proc("sh", "/usr/bin/python3", ("python3",)),
                                   _stat("python3"))


def test_the_program_read_is_still_running() -> None:
    assert still_the_exec_read(_proc("nginx", "/usr/sbin/nginx", ("nginx",)), _stat("nginx"))
    # BusyBox renaming itself from "exe" to its applet is not another exec
    applet = _proc(process_name("exe", BUSYBOX, ("sh", "-c", "x")), BUSYBOX, ("sh", "-c", "x"))
    assert still_the_exec_read(applet, _stat("exe"))
    assert still_the_exec_read(applet, _stat("sh"))


def test_an_exited_or_other_process_is_not_the_one_read() -> None:
    proc = _proc("nginx", "/usr/sbin/nginx", ("nginx",))
    assert not still_the_exec_read(proc, _stat("nginx", state="Z"))
    assert not still_the_exec_read(proc, _stat("nginx", start_time=501))  # the pid was reused
