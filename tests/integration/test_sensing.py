"""The collector's sensing on real runc containers: workload, family, image origin, users."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.kernel.procfs import read_proc
from collectors.sensing import sensor as sensing
from collectors.sensing.sensor import Sensor
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver, container_id_from_cgroup
from procwarden.testbed.containers import Container, run_container
from schemas import Origin, WorkloadKind

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "testbed"


@pytest.fixture
def web() -> Iterator[Container]:
    with run_container(WORKDIR, "web", namespace="demo", pod="web-7d9f8c6b5-x2k4q",
                       labels={"app": "web"}, probes=[["cat", "/tmp/healthy"]],
                       command=("/bin/sh", "-c", "while true; do sleep 1; done")) as c:
        yield c


def _pids_in(container: Container, argv0: str, timeout: float = 10.0,
             outside_init: bool = False) -> list[int]:
    """Pids in the container whose argv[0] is `argv0` (optionally: not children of init)."""
    ns = os.readlink(f"/proc/{container.init_pid}/ns/pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            info = read_proc(int(pid))
            if (info and info.pid_ns == ns and info.argv[:1] == (argv0,)
                    and not (outside_init and info.ppid == container.init_pid)):
                found.append(info.pid)
        if found:
            return found
        time.sleep(0.05)
    return []


def sensor() -> Sensor:
    return Sensor(WorkloadResolver(node="node-1"))


def test_container_process_has_its_workload_and_is_family(web: Container) -> None:
    sensed = sensor().sense_exec(web.init_pid)
    assert sensed is not None
    wl, ev = sensed.workload, sensed.event
    assert (wl.id, wl.kind, wl.name, wl.namespace, wl.pod) == (
        web.id, WorkloadKind.CONTAINER, "web", "demo", "web-7d9f8c6b5-x2k4q")
    assert wl.service == "web" and wl.labels == {"app": "web"}
    assert wl.probe_cmds == (("cat", "/tmp/healthy"),) and not wl.system
    assert (ev.path, ev.name, ev.argv[0]) == ("/bin/busybox", "sh", "/bin/sh")
    assert ev.family and not ev.runtime_injected and ev.origin is Origin.IMAGE
    assert ev.user == "root" and not ev.exe_on_host
    (child,) = _pids_in(web, "sleep")[:1]
    sensed = sensor().sense_exec(child)
    assert sensed is not None and sensed.event.family
    assert sensed.event.parent_name == "sh" and sensed.event.ppid == web.init_pid


def test_runc_exec_is_not_family(web: Container) -> None:
    proc = web.spawn("sleep", "30", user="33:33")
    try:
        (pid,) = _pids_in(web, "sleep", outside_init=True)[:1]
        sensed = sensor().sense_exec(pid)
        assert sensed is not None
        assert not sensed.event.family and sensed.event.runtime_injected
        assert (sensed.event.user, sensed.event.euid) == ("www-data", 33)
    finally:
        proc.kill()
        proc.wait()


def test_a_host_process_in_a_container_is_not_family_at_first_sight(
        web: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the container's pid namespace (a host process moved into its cgroups), never
    family, and said without reading every ancestor up to the host's init."""
    me = read_proc(os.getpid())
    assert me is not None
    info = ContainerInfo(id=web.id, init_pid=web.init_pid, annotations={}, upperdir=None,
                         lowerdirs=())
    reads: list[int] = []
    monkeypatch.setattr(sensing, "read_proc", reads.append)
    assert not sensor().is_family(me, info)
    assert reads == []


def test_new_and_modified_executables(web: Container) -> None:
    web.exec("cp", "/bin/busybox", "/tmp/sleep")
    new = web.spawn("/tmp/sleep", "30")
    try:
        (pid,) = _pids_in(web, "/tmp/sleep")[:1]
        sensed = sensor().sense_exec(pid)
        assert sensed is not None
        assert (sensed.event.path, sensed.event.origin) == ("/tmp/sleep", Origin.NEW)
    finally:
        new.kill()
        new.wait()
    web.exec("sh", "-c", "chmod 755 /bin/busybox")  # copy-up, same content: still the image's
    resolver = WorkloadResolver(node="node-1")
    info = resolver.container_of(Path(f"/proc/{web.init_pid}/cgroup").read_text())
    assert info is not None
    from collectors.sensing.sensor import exe_origin

    assert exe_origin(info, "/bin/busybox") is Origin.IMAGE
    web.exec("sh", "-c", "printf x >> /etc/hostname")  # a running binary cannot be written
    assert exe_origin(info, "/etc/hostname") is Origin.MODIFIED
    assert exe_origin(info, "/bin/never-there") is Origin.IMAGE


def test_host_process_belongs_to_nodes() -> None:
    sensed = sensor().sense_exec(os.getpid())
    assert sensed is not None
    assert (sensed.workload.kind, sensed.workload.id) == (WorkloadKind.HOST, "host:node-1")
    assert sensed.event.workload_id == "host:node-1" and sensed.event.user == "root"


@pytest.mark.parametrize("cgroup,expected", [
    ("9:pids:/pw-web-12ab34cd56\n", "pw-web-12ab34cd56"),
    ("0::/system.slice/cri-containerd-" + "a" * 64 + ".scope\n", "a" * 64),
    ("11:memory:/kubepods/besteffort/pod1234/" + "b" * 64 + "\n", "b" * 64),
    ("0::/user.slice/crio-" + "c" * 64 + ".scope", "c" * 64),
])
def test_container_ids_from_cgroups(cgroup: str, expected: str) -> None:
    assert container_id_from_cgroup(cgroup) == expected


def test_gone_processes_read_as_none() -> None:
    assert read_proc(2**22 + 12345) is None


_SUBREAPER = """
import ctypes, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
sh = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; read x"], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
print(sh.pid, sh.stdout.readline().strip(), flush=True)
sh.wait()  # reaped once killed: its pid no longer reads
print("gone", flush=True)
sys.stdin.readline()
"""


def test_an_orphan_whose_parent_just_exited_is_still_family() -> None:
    # `sh -c 'httpd &'` in a container: the shell exits at once, and httpd's parent as first
    # read is gone by the time the family check reads it. Here the "container init" is a child
    # subreaper, which adopts the orphan as a container's init would.
    with subprocess.Popen([sys.executable, "-c", _SUBREAPER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as init:
        try:
            assert init.stdout is not None
            sh_pid, orphan_pid = map(int, init.stdout.readline().split())
            before = read_proc(orphan_pid)
            assert before is not None and before.ppid == sh_pid
            os.kill(sh_pid, signal.SIGKILL)
            assert init.stdout.readline().strip() == "gone"
            assert read_proc(sh_pid) is None
            deadline = time.monotonic() + 10
            while (now := read_proc(orphan_pid)) is not None and now.ppid == sh_pid:
                assert time.monotonic() < deadline, "the orphan was not reparented"
                time.sleep(0.01)
            info = ContainerInfo(id="box", init_pid=init.pid, annotations={}, upperdir=None,
                                 lowerdirs=())
            assert sensor().is_family(before, info)  # read with its old, now gone, parent
            os.kill(orphan_pid, signal.SIGKILL)
        finally:
            init.kill()
