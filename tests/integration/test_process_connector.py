"""The process connector on the real kernel: every fork, exec and exit of the host, read in
batches, in order, with losses counted."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from collectors.kernel.connector import (
    COMM,
    EXEC,
    EXIT,
    FORK,
    ProcConnector,
    ProcEvent,
    kernel_filters,
)
from tests.integration.streamkit import spawn_true


def _read_until(connector: ProcConnector, wanted: set[int], timeout: float = 5.0
                ) -> list[ProcEvent]:
    """Everything read until an exit of each pid in `wanted` is among it."""
    events: list[ProcEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += connector.read()
        if wanted <= {e.tgid for e in events if e.what == EXIT}:
            break
        time.sleep(0.01)
    return events


def test_every_fork_exec_and_exit_arrives_in_order() -> None:
    connector = ProcConnector(batch=8)  # a small batch: many reads, each taking several
    try:
        pids = spawn_true(300)
        events = _read_until(connector, set(pids))
    finally:
        connector.close()
    seen: dict[int, list[int]] = {pid: [] for pid in pids}
    for e in events:
        if e.tgid in seen and e.pid == e.tgid:
            seen[e.tgid].append(e.what)
    assert all(whats == [FORK, EXEC, EXIT] for whats in seen.values()), seen
    forks = {e.tgid: e.a for e in events if e.what == FORK and e.tgid in seen}
    assert set(forks.values()) == {os.getpid()}  # the parent's tgid comes with each fork
    assert connector.overruns == 0


def test_a_full_socket_is_an_overrun_and_reading_goes_on() -> None:
    connector = ProcConnector(rcvbuf=4096)  # room for a few messages only
    try:
        spawn_true(300)
        time.sleep(0.1)
        connector.read()
        assert connector.overruns >= 1 and connector.drained
        later = spawn_true(1)
        events = _read_until(connector, set(later))
    finally:
        connector.close()
    assert [e.what for e in events if e.tgid == later[0]] == [FORK, EXEC, EXIT]


def test_a_process_renaming_itself_is_told() -> None:
    connector = ProcConnector()
    try:
        renamer = subprocess.run(
            [sys.executable, "-c", "import ctypes, os; ctypes.CDLL(None).prctl("
             "15, b'pw-new-name', 0, 0, 0); print(os.getpid())"],  # 15: PR_SET_NAME
            check=True, capture_output=True, text=True)
        pid = int(renamer.stdout)
        events = _read_until(connector, {pid})
    finally:
        connector.close()
    assert [e.what for e in events if e.tgid == pid and e.pid == pid] == [
        FORK, EXEC, COMM, EXIT]


def test_a_listener_choosing_forks_and_exits_is_sent_nothing_else() -> None:
    """The exec answerer's connector: on a kernel that filters (6.6 and later, as here) it is
    not woken by execs and renames; on an older one it is sent everything, as before."""
    chooser, everything = ProcConnector(events=FORK | EXIT), ProcConnector()
    try:
        pids = spawn_true(50)
        chosen = _read_until(chooser, set(pids))
        unchosen = _read_until(everything, set(pids))
    finally:
        chooser.close()
        everything.close()
    wanted = [FORK, EXIT] if kernel_filters() else [FORK, EXEC, EXIT]
    for pid in pids:
        assert [e.what for e in chosen if e.tgid == pid and e.pid == pid] == wanted
        # the execs were there to send: a listener that did not choose was sent them
        assert [e.what for e in unchosen if e.tgid == pid and e.pid == pid] == [
            FORK, EXEC, EXIT]
    if kernel_filters():
        assert {e.what for e in chosen} <= {FORK, EXIT}  # nothing else of the host either
    forks = {e.tgid: e.a for e in chosen if e.what == FORK and e.tgid in set(pids)}
    assert set(forks.values()) == {os.getpid()}
