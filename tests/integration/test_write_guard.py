"""The write guard on the real kernel, apart from any container: the open flags it reads from a
caller blocked in its open call, and that an exec answerer which cannot answer lets go rather
than hang whoever opens a file under it."""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.enforcement.exec_answerer import ExecAnswerer
from collectors.enforcement.write_guard import WriteGuard
from collectors.kernel.procfs import opens_for_writing
from collectors.sensing.workloads import WorkloadResolver
from collectors.settings import CollectorSettings


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own, so the guard's mount mark sees only this test's opens."""
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], check=True)
    try:
        (where / "file").write_text("image\n")
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_the_callers_open_flags_are_read_while_it_waits(mount: Path) -> None:
    seen: list[bool | None] = []
    guard = WriteGuard(WorkloadResolver(node="test"), lambda _: None)

    def judge(event: object) -> bool:
        seen.append(opens_for_writing(event.pid))  # type: ignore[attr-defined]
        return True  # a host process: its own business, as the guard says

    guard.on_open = judge  # type: ignore[method-assign]
    guard.group.watch(str(mount))
    stop = threading.Event()

    def answering() -> None:  # as the exec answerer's loop does
        while not stop.is_set():
            if select.select([guard.fileno()], [], [], 0.1)[0]:
                guard.answer_pending()

    thread = threading.Thread(target=answering)
    thread.start()
    try:
        target = mount / "file"
        for line in (f"cat {target}", f"echo x >> {target}", f"echo y > {target}",
                     f"true < {target}"):
            subprocess.run(["sh", "-c", line], check=True, timeout=10, capture_output=True)
    finally:
        stop.set()
        thread.join(10)
        guard.close()
    # The opens of the file, in order: cat reads, the shell appends, truncates, reads.
    assert seen == [False, True, True, False]
    assert guard.answered == {"allow": 4}


def test_an_answerer_that_cannot_answer_lets_the_opens_go(mount: Path, tmp_path: Path) -> None:
    """Five failures in a row: the exec answerer closes its groups and ends (the collector
    starts another), so the kernel lets the held open go instead of hanging its caller."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    answerer = ExecAnswerer(CollectorSettings(node="test", state_dir=tmp_path), theirs)
    assert answerer.writes is not None

    def broken() -> list[object]:
        raise OSError("the fanotify queue cannot be read")

    answerer.writes.group.read = broken  # type: ignore[method-assign]
    answerer.writes.group.watch(str(mount))
    thread = threading.Thread(target=answerer.run)
    thread.start()
    try:
        started = time.monotonic()
        done = subprocess.run(["sh", "-c", f"echo z >> {mount / 'file'}"], timeout=30,
                              capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 10
        thread.join(10)
        assert not thread.is_alive() and answerer.gave_up
        assert answerer.group is None and answerer.writes is None
    finally:
        ours.close()
        thread.join(10)
        theirs.close()
