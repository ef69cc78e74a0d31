"""fanotify exec notices on the real kernel: the file of each exec, and none of the ELF
interpreter's once it was seen."""

from __future__ import annotations

import os
import time
from pathlib import Path

from collectors.kernel.fanotify import ExecNotice, NotificationGroup
from collectors.sensing.sensor import is_loader
from tests.integration.streamkit import spawn_true

TRUE = "/usr/bin/true"  # what spawn_true runs


def _notices(group: NotificationGroup, pids: set[int]) -> list[ExecNotice]:
    found: list[ExecNotice] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {n.pid for n in found} < pids:
        found += [n for n in group.read() if n.pid in pids]
        time.sleep(0.01)
    return found


def test_each_exec_is_noticed_and_the_loader_only_once() -> None:
    assert not Path(os.path.realpath(TRUE)).read_bytes().startswith(b"#!")
    group = NotificationGroup(unwanted=is_loader)
    try:
        group.watch_filesystem("/")
        first = set(spawn_true(1))
        notices = _notices(group, first)  # the first loader notice comes, and is marked
        pids = first | set(spawn_true(19))
        notices += _notices(group, pids - first)
        group.read()  # anything left
    finally:
        group.close()
    assert sorted(n.pid for n in notices) == sorted(pids)
    assert {n.path for n in notices} == {os.path.realpath(TRUE)}
    # A dynamically linked program's exec opens its interpreter too: the kernel sent that
    # notice once, then the ignore mark kept the other 19 away (once the first was read).
    assert group.unwanted_seen == 1
