"""Safe reads of a workload's files (issue 21), on the real kernel without containers (as root:
mknod, mount and chroot): a
temporary folder stands for the container's root, and a forked child chrooted into it stands
for the container's init (its /proc/<pid>/root is that folder)."""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from collectors.sensing import container_files
from collectors.sensing.container_files import DEFAULT_MAX_BYTES, read_container_file, read_in_root
from collectors.sensing.escalation import groups_of, uid_min
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_container_file_refused_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    box = tmp_path / "root"
    (box / "etc").mkdir(parents=True)
    (box / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\nbox:x:4242:4242::/:/bin/sh\n")
    return box


def test_a_regular_file_is_read(root: Path) -> None:
    assert read_in_root(root, "/etc/passwd") == (root / "etc" / "passwd").read_bytes()
    assert read_in_root(root, "etc/passwd") == (root / "etc" / "passwd").read_bytes()


def test_an_absent_file_is_none_and_not_counted(root: Path) -> None:
    before = sum(_refused(r) for r in ("error", "not_regular", "other_mount"))
    assert read_in_root(root, "etc/shadow") is None
    assert read_in_root(root, "etc/passwd/x") is None  # ENOTDIR
    assert read_in_root(root / "gone", "etc/passwd") is None  # the process exited
    assert sum(_refused(r) for r in ("error", "not_regular", "other_mount")) == before


def test_an_absolute_symlink_resolves_inside_the_root(root: Path, host_decoy: Path) -> None:
    (root / "etc" / "login.defs").symlink_to(host_decoy)
    assert read_in_root(root, "etc/login.defs") is None  # the host's file is not there
    inside = root / str(host_decoy).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("UID_MIN 5000\n")
    assert read_in_root(root, "etc/login.defs") == b"UID_MIN 5000\n"


def test_dot_dot_stays_inside_the_root(root: Path, host_decoy: Path) -> None:
    (root / "etc" / "up").symlink_to("../../../../../../.." + str(host_decoy))
    assert read_in_root(root, "etc/up") is None
    assert read_in_root(root, "../../../../.." + str(host_decoy)) is None


def test_a_fifo_is_refused_without_being_opened(root: Path) -> None:
    os.mkfifo(root / "etc" / "group")
    before = _refused("not_regular")
    started = time.monotonic()
    assert read_in_root(root, "etc/group") is None  # an open for reading would block here
    assert time.monotonic() - started < 1
    assert _refused("not_regular") == before + 1


def test_a_device_node_is_refused(root: Path) -> None:
    os.mknod(root / "etc" / "zero", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero's
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/etc/zero")
    before = _refused("not_regular")
    assert read_in_root(root, "etc/zero") is None
    assert read_in_root(root, "etc/passwd") is None
    assert _refused("not_regular") == before + 2


def test_a_directory_is_refused(root: Path) -> None:
    before = _refused("not_regular")
    assert read_in_root(root, "etc") is None
    assert _refused("not_regular") == before + 1


def test_a_file_over_the_cap_is_refused_whole(root: Path) -> None:
    with open(root / "etc" / "huge", "wb") as fh:
        fh.truncate(2**40)  # sparse: a terabyte that takes no disk
    (root / "etc" / "edge").write_bytes(b"x" * DEFAULT_MAX_BYTES)
    (root / "etc" / "over").write_bytes(b"x" * (DEFAULT_MAX_BYTES + 1))
    before = _refused("too_large")
    assert read_in_root(root, "etc/huge") is None
    assert read_in_root(root, "etc/over") is None
    assert read_in_root(root, "etc/edge") == b"x" * DEFAULT_MAX_BYTES
    assert read_in_root(root, "etc/edge", max_bytes=100) is None  # the cap is a parameter
    assert _refused("too_large") == before + 3


def test_a_file_that_grows_past_the_cap_while_read_is_refused(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its size said it fitted; what is read decides (one byte past the cap is enough)."""
    (root / "etc" / "grows").write_bytes(b"x" * 200)
    real_fstat = os.fstat

    def small(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid,
                               st.st_gid, 10, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(os, "fstat", small)  # both of its looks at the file
    before = _refused("too_large")
    assert read_in_root(root, "etc/grows", max_bytes=100) is None
    assert _refused("too_large") == before + 1


def test_a_file_on_another_mount_is_refused(root: Path) -> None:
    mnt = root / "etc" / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "passwd").write_text("other:x:1:1::/:/bin/sh\n")
        (root / "etc" / "viamount").symlink_to("/etc/mnt/passwd")
        before = _refused("other_mount")
        assert read_in_root(root, "etc/mnt/passwd") is None
        assert read_in_root(root, "etc/viamount") is None
        assert _refused("other_mount") == before + 2
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_without_openat2_nothing_is_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 5.6 (or a seccomp filter saying ENOSYS): refused, never read unsafely."""
    def enosys(*_: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(container_files, "_syscall", enosys)
    before = _refused("unsupported")
    assert read_in_root(root, "etc/passwd") is None
    assert _refused("unsupported") == before + 1


def test_a_refusal_is_logged_once_per_file(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(root / "etc" / "fifo")
    where = f"box-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="collectors.sensing.container_files"):
        for _ in range(3):
            assert read_in_root(root, "etc/fifo", where=where) is None
    assert [r.getMessage() for r in caplog.records] == [f"etc/fifo of {where} not read: "
                                                        "not_regular"]


@pytest.fixture
def init(root: Path) -> Iterator[int]:
    """A process chrooted into `root`: a container's init, as far as /proc/<pid>/root goes."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.chroot(root)
            os.chdir("/")
            os.write(ready_w, b"1")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        yield pid
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_process_root_is_read_inside_it(root: Path, init: int, host_decoy: Path) -> None:
    (root / "etc" / "group").symlink_to(host_decoy)
    assert read_container_file(init, "etc/passwd") == (root / "etc" / "passwd").read_bytes()
    assert read_container_file(init, "etc/group") is None  # not the host's decoy


def _runtime(tmp_path: Path, cid: str, init_pid: int) -> WorkloadResolver:
    runtime = tmp_path / "run-runc"
    (runtime / cid).mkdir(parents=True)
    (runtime / cid / "state.json").write_text(json.dumps(
        {"init_process_pid": init_pid, "config": {"labels": ["io.kubernetes.pod.name=p"]}}))
    return WorkloadResolver(node="node-1", runtime_roots=(str(runtime),))


def test_finding_a_container_opens_no_file_inside_it(
        tmp_path: Path, root: Path, init: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exec answerer finds containers while every exec of the node is held: nothing the
    container controls may be opened on that path. Its passwd is a FIFO here, and every read
    of a workload file is recorded."""
    (root / "etc" / "passwd").unlink()
    os.mkfifo(root / "etc" / "passwd")
    reads: list[tuple[object, str]] = []
    real = container_files.read_in_root

    def recorded(at: str | Path, path: str, **kw: object) -> bytes | None:
        reads.append((at, path))
        return real(at, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(container_files, "read_in_root", recorded)
    resolver = _runtime(tmp_path, "box1", init)
    started = time.monotonic()
    info = resolver.container("box1")
    assert info is not None and info.init_pid == init
    assert resolver.workload(info).pod == "p"
    assert time.monotonic() - started < 1
    assert reads == []
    before = _refused("not_regular")
    assert resolver.user_name(info, 0) == "0"  # read now, refused at once
    assert resolver.user_name(info, 4242) == "4242"  # and only once
    assert reads == [(f"/proc/{init}/root", "etc/passwd")]
    assert _refused("not_regular") == before + 1


def test_user_names_and_escalation_facts_come_from_the_container(
        tmp_path: Path, root: Path, init: int) -> None:
    (root / "etc" / "group").write_text("wheel:x:10:box\nbox:x:4242:\nother:x:7:\n")
    (root / "etc" / "login.defs").write_text("# comment\nUID_MIN\t500\n")
    resolver = _runtime(tmp_path, "box2", init)
    info = resolver.container("box2")
    assert info is not None
    assert resolver.user_name(info, 4242) == "box"
    assert uid_min(info) == 500
    assert groups_of(info, "box", 4242) == ("wheel", "box")
    assert uid_min(info, max_bytes=4) == 1000  # refused: the default


def test_a_container_restarted_with_a_new_init_is_read_again(
        tmp_path: Path, root: Path, init: int) -> None:
    resolver = WorkloadResolver(node="node-1", runtime_roots=())
    assert resolver.user_name(ContainerInfo("c", 0, {}, None, ()), 4242) == "4242"  # gone
    assert resolver.user_name(ContainerInfo("c", init, {}, None, ()), 4242) == "box"
