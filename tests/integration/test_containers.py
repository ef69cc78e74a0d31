"""runc test containers: a BusyBox image on overlayfs with Kubernetes-style annotations."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procwarden.testbed.containers import ANNOTATIONS, Container, remove_leftovers, run_container

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "testbed"


@pytest.fixture
def web() -> Iterator[Container]:
    with run_container(WORKDIR, "web", namespace="demo", owner="web",
                       labels={"app": "web", "tier": "front"},
                       probes=[["cat", "/tmp/healthy"]]) as container:
        yield container


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def test_container_runs_with_annotations(web: Container) -> None:
    state = web.state()
    assert state["status"] == "running" and state["pid"] == web.init_pid
    annotations = state["annotations"]
    assert isinstance(annotations, dict)
    assert annotations[ANNOTATIONS["namespace"]] == "demo"
    assert annotations[ANNOTATIONS["container"]] == "web"
    assert json.loads(annotations[ANNOTATIONS["labels"]]) == {"app": "web", "tier": "front"}
    assert json.loads(annotations[ANNOTATIONS["probes"]]) == [["cat", "/tmp/healthy"]]
    # The init process runs the image's BusyBox inside its own pid namespace.
    assert os.readlink(f"/proc/{web.init_pid}/exe").endswith("busybox")
    assert os.readlink(f"/proc/{web.init_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert web.id in Path(f"/proc/{web.init_pid}/cgroup").read_text()


def test_exec_is_injected_from_outside_the_process_tree(web: Container) -> None:
    shell = web.spawn("sleep", "30")
    try:
        deadline = time.monotonic() + 10
        pid = None
        while pid is None and time.monotonic() < deadline:
            for candidate in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{candidate}/cmdline").read_bytes()
                    same_ns = (os.readlink(f"/proc/{candidate}/ns/pid")
                               == os.readlink(f"/proc/{web.init_pid}/ns/pid"))
                except OSError:
                    continue
                if cmdline == b"sleep\x0030\x00" and same_ns:
                    pid = int(candidate)
            time.sleep(0.05)
        assert pid is not None
        assert web.init_pid not in _ancestors(pid)  # not family: runc put it there
        child = web.exec("sh", "-c", "echo $$")
        assert child.returncode == 0
    finally:
        shell.kill()
        shell.wait()


def test_upper_layer_shows_drift(web: Container) -> None:
    assert not any(web.upperdir.iterdir())
    web.exec("sh", "-c", "printf '#!/bin/sh\\necho dropped\\n' > /tmp/dropped"
                         " && chmod +x /tmp/dropped")
    web.exec("sh", "-c", "echo x >> /etc/hostname")
    assert (web.upperdir / "tmp" / "dropped").is_file()
    assert (web.upperdir / "etc" / "hostname").read_text().endswith("x\n")  # copied up
    assert (web.lowerdir / "etc" / "hostname").read_text() == "busybox\n"  # image untouched
    assert web.exec("/tmp/dropped").stdout == "dropped\n"


def test_users_resolve_in_the_image(web: Container) -> None:
    out = web.exec("id", user="33:33").stdout
    assert "uid=33(www-data)" in out


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    container = run_container(WORKDIR, "short")
    rootfs, bundle = container.rootfs, container.bundle
    assert os.path.ismount(rootfs)
    container.stop()
    assert not os.path.ismount(rootfs) and not bundle.exists()
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert container.id not in listed
    with open("/proc/self/mountinfo") as fh:
        assert container.id not in fh.read()


def test_a_container_an_interrupted_run_left_behind_is_removed() -> None:
    box = run_container(WORKDIR, "leftover", namespace="demo")
    try:
        subprocess.run(["runc", "kill", box.id, "KILL"], check=True)  # and then the run dies
        deadline = time.monotonic() + 10
        while box.state().get("status") != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        with run_container(WORKDIR, "alive", namespace="demo") as alive:
            assert os.path.ismount(box.rootfs)
            removed = remove_leftovers(WORKDIR)
            assert box.id in removed and alive.id not in removed
            assert not box.bundle.exists() and not os.path.ismount(box.rootfs)
            listed = json.loads(subprocess.run(["runc", "list", "--format", "json"], check=True,
                                               capture_output=True, text=True).stdout or "null")
            ids = {c["id"] for c in listed or []}
            assert box.id not in ids and alive.id in ids
            assert alive.state()["status"] == "running"
    finally:
        box.stop()  # when the removal failed
