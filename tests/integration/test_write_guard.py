"""The write guard on the real kernel, apart from any container: the open flags it reads from a
caller blocked in its open call, and that a guard which cannot answer lets go rather than hang
whoever opens a file under it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.procfs import opens_for_writing
from collectors.workloads import WorkloadResolver
from collectors.write_guard import WriteGuard


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
    guard = WriteGuard(WorkloadResolver(node="test"), lambda *_: "")

    def judge(event: object) -> bool:
        seen.append(opens_for_writing(event.pid))  # type: ignore[attr-defined]
        return True  # a host process: its own business, as the guard says

    guard.on_open = judge  # type: ignore[method-assign]
    guard.group.watch(str(mount))
    guard.start()
    try:
        target = mount / "file"
        for line in (f"cat {target}", f"echo x >> {target}", f"echo y > {target}",
                     f"true < {target}"):
            subprocess.run(["sh", "-c", line], check=True, timeout=10, capture_output=True)
    finally:
        guard.stop()
    # The opens of the file, in order: cat reads, the shell appends, truncates, reads.
    assert seen == [False, True, True, False]


def test_a_guard_that_cannot_answer_lets_the_opens_go(mount: Path) -> None:
    guard = WriteGuard(WorkloadResolver(node="test"), lambda *_: "")

    def broken() -> list[object]:
        raise OSError("the fanotify queue cannot be read")

    guard.group.read = broken  # type: ignore[method-assign]
    guard.group.watch(str(mount))
    guard.start()
    try:
        started = time.monotonic()
        done = subprocess.run(["sh", "-c", f"echo z >> {mount / 'file'}"], timeout=30,
                              capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        assert guard.closed and time.monotonic() - started < 10
        guard.guard("anything", True)  # nothing to hold with any more: ignored
    finally:
        guard.stop()
