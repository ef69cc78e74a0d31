"""An escalation (uid change) event carries the process's command line as an exec event does:
read with the collector's caps, and marked when they cut it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from collectors.kernel.procfs import ArgvLimits
from collectors.sensing.escalation import EscalationWatch
from collectors.sensing.workloads import WorkloadResolver

NOBODY = 65534


def _cut(cap: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_truncated_total",
                                     {"field": "argv", "cap": cap}) or 0.0


@pytest.fixture
def escalated() -> Iterator[int]:
    """A process with a long command line whose parent is not root (as after `su` from a
    user's shell); its pid."""
    # (root, like the other kernel tests here: CI runs them as root, and without it this fails)
    python = "/usr/bin/python3"  # (one another user may run)
    child = [python, "-c", "import time; time.sleep(30)", *["--secret=s3cr3t"] * 300]
    parent = subprocess.Popen(
        [python, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", *child],
        user=NOBODY, cwd="/", stdin=subprocess.DEVNULL)
    pid = 0
    try:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        deadline = time.monotonic() + 10
        while not (found := children.read_text().split()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert found, "the child did not start"
        pid = int(found[0])
        while len(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")) < 300:
            time.sleep(0.02)  # (forked, not exec'd yet)
        yield pid
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_an_escalation_whose_argv_was_cut_says_so(escalated: int) -> None:
    limits = ArgvLimits(max_args=8)
    watch = EscalationWatch(WorkloadResolver(node="node-unit", runtime_roots=()), limits)
    before = _cut("args")
    watch.on_uid_change(escalated, 0, now=0.0)
    (event,) = watch.run_due(now=1.0)
    assert event.pid == escalated and event.parent_ruid == NOBODY
    assert len(event.argv) == 8 and event.argv_truncated
    assert all("s3cr3t" not in a for a in event.argv)  # masked, as exec events are
    assert _cut("args") == before + 1


def test_an_escalation_within_the_caps_is_not_marked(escalated: int) -> None:
    watch = EscalationWatch(WorkloadResolver(node="node-unit", runtime_roots=()),
                            ArgvLimits(max_args=1000))
    watch.on_uid_change(escalated, 0, now=0.0)
    (event,) = watch.run_due(now=1.0)
    assert len(event.argv) == 303 and not event.argv_truncated
