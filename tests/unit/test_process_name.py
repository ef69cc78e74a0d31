"""The process name the collector reports: the kernel's comm, except the transient "exe" of a
BusyBox applet re-executed through /proc/self/exe."""

from __future__ import annotations

from collectors.procfs import process_name

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
