"""The collector's sensing against a hostile container (issue 21): the container really runs each
attack, in a real runc container, and the root collector must neither read a host file for it,
nor block, nor read without bound.

Each read runs in a thread joined with a timeout: on the code before the fix, some of these
reads never return (a FIFO), and the test must fail rather than hang.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from collectors.sensing.escalation import groups_of, uid_min
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver
from procwarden.testbed.containers import Container, run_container

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "testbed"

T = TypeVar("T")

# Reader threads still running after `_within` gave up on them (the code before the fix).
_LEAKED: list[threading.Thread] = []


@pytest.fixture
def box() -> Iterator[Container]:
    with run_container(WORKDIR, "hostile", namespace="attack") as container:
        yield container


def _info(box: Container) -> tuple[WorkloadResolver, ContainerInfo]:
    resolver = WorkloadResolver(node="node-h")
    info = resolver.container(box.id)
    assert info is not None and info.init_pid == box.init_pid
    return resolver, info


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s result, or a test failure if it has not returned after `seconds`."""
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _LEAKED.append(thread)
    assert not thread.is_alive(), f"the read did not return within {seconds} s (blocked)"
    if failed:
        raise failed[0]
    return result[0]


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_container_file_refused_total",
                                     {"reason": reason}) or 0.0


@contextlib.contextmanager
def _memory_capped(extra: int = 512 * 2**20) -> Iterator[None]:
    """The test process may grow by `extra` bytes at most meanwhile: a regression that reads
    /dev/zero fails with MemoryError instead of taking the machine's memory."""
    size = next(int(line.split()[1]) * 1024 for line in
                Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmSize:"))
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, old[1]))
    try:
        yield
    finally:
        # A reader left running (reading /dev/zero) must meet the cap before it is lifted, or
        # it takes the machine's memory once the test has failed; one that blocks for ever
        # keeps the cap for the rest of the session.
        for thread in _LEAKED:
            thread.join(60)
        if not any(thread.is_alive() for thread in _LEAKED):
            resource.setrlimit(resource.RLIMIT_AS, old)


def test_an_absolute_symlink_resolves_inside_the_container(box: Container,
                                                           host_decoy: Path) -> None:
    box.exec("sh", "-c", f"printf 'boxuser:x:4242:4242:box:/:/bin/sh\\nUID_MIN 5000\\n' "
                         f"> {host_decoy} && ln -sf {host_decoy} /etc/passwd "
                         f"&& ln -sf {host_decoy} /etc/login.defs")
    assert os.readlink(box.rootfs / "etc" / "passwd") == str(host_decoy)
    resolver, info = _info(box)
    name = _within(5, lambda: resolver.user_name(info, 4242))
    assert name != "hostonly", "the host's file was read for the container"
    assert name == "boxuser"  # the container's own view of its symlink
    assert _within(5, lambda: uid_min(info)) == 5000
    assert _within(5, lambda: groups_of(info, "boxuser", 4242)) == ()


def test_a_symlink_to_a_host_only_path_is_not_followed_out(box: Container,
                                                           host_decoy: Path) -> None:
    """The target exists on the host only: inside the container it resolves to nothing."""
    box.exec("sh", "-c", f"ln -sf {host_decoy} /etc/passwd")
    resolver, info = _info(box)
    assert _within(5, lambda: resolver.user_name(info, 4242)) == "4242"


def test_a_fifo_login_defs_is_refused_at_once(box: Container) -> None:
    box.exec("sh", "-c", "rm /etc/login.defs && mkfifo /etc/login.defs")
    fifo = box.rootfs / "etc" / "login.defs"
    _, info = _info(box)
    before = _refused("not_regular")
    try:
        assert _within(5, lambda: uid_min(info)) == 1000  # the default: the file is refused
    finally:
        # On the code before the fix a thread is blocked opening the FIFO: a writer frees it.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert _refused("not_regular") == before + 1


@pytest.mark.parametrize("make", [
    "ln -sf /dev/zero /etc/passwd",  # on the host, /dev/zero is the host's device
    "rm /etc/passwd && mknod /etc/passwd c 1 5",  # a device node on the container's own root
], ids=["symlink", "device-node"])
def test_a_passwd_that_never_ends_is_refused(box: Container, make: str) -> None:
    box.exec("sh", "-c", make)
    assert not (box.rootfs / "etc" / "passwd").resolve().is_file()
    before = _refused("not_regular") + _refused("other_mount")
    tracemalloc.start()
    try:
        with _memory_capped():  # the code before the fix read passwd in `container()`
            resolver, info = _within(5, lambda: _info(box))
            name = _within(5, lambda: resolver.user_name(info, 33))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert name == "33"
    assert peak < 2**20, f"{peak} bytes allocated for one refused file"
    assert _refused("not_regular") + _refused("other_mount") == before + 1


def test_a_huge_passwd_is_bounded(box: Container) -> None:
    # Written through the container's root from here: `yes | head` inside it took over
    # 30 s on a loaded CI machine (what is read is the same file).
    line = b"big:x:5:5:big:/:/bin/sh\n"
    with open(box.rootfs / "etc" / "passwd", "wb") as out:
        block = line * (2**20 // len(line) + 1)
        for _ in range(50):
            out.write(block[:2**20])
    assert (box.upperdir / "etc" / "passwd").stat().st_size == 50 * 2**20
    before = _refused("too_large")
    tracemalloc.start()
    try:
        resolver, info = _within(5, lambda: _info(box))
        name = _within(5, lambda: resolver.user_name(info, 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated to read a 50 MB passwd"
    assert name == "5"  # refused whole: no name rather than one read from a part
    assert _refused("too_large") == before + 1


def test_finding_a_container_reads_none_of_its_files(box: Container) -> None:
    """The exec answerer holds every exec of the node while it finds the exec's container: a
    FIFO passwd must not stall it, because finding a container opens no file inside it."""
    box.exec("sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd")
    fifo = box.rootfs / "etc" / "passwd"
    refused = _refused("not_regular")
    try:
        resolver, info = _within(5, lambda: _info(box))
        assert _refused("not_regular") == refused  # not even looked at
        assert _within(5, lambda: resolver.user_name(info, 0)) == "0"  # read when asked
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert _refused("not_regular") == refused + 1
