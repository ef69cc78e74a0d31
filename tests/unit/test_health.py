"""A role's health: the gauge, the file `procwarden status` reads, and staleness."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prometheus_client import REGISTRY

from transport.health import Health, read_health


def _gauge(role: str) -> float | None:
    return REGISTRY.get_sample_value("procwarden_ready", {"role": role})


def test_the_gauge_and_the_file_follow_the_role(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "streams.health.json"
    health = Health("unit-a", path, clock=lambda: now[0])
    assert _gauge("unit-a") == 0
    health.set(False, "the policy mirror has not caught up")
    assert read_health(path, now=101.0)[0] == "not ready: the policy mirror has not caught up"
    health.set(True)
    assert _gauge("unit-a") == 1
    said, report = read_health(path, now=101.0)
    assert said == "ready" and report is not None and report.pid == os.getpid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    health.set(False, "the decider's loop stopped")
    assert _gauge("unit-a") == 0
    assert read_health(path, now=101.0)[0] == "not ready: the decider's loop stopped"


def test_a_heartbeat_that_stops_reads_as_not_responding(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    Health("unit-b", path, clock=lambda: 50.0).set(True)
    assert read_health(path, now=55.0)[0] == "ready"
    assert read_health(path, now=90.0)[0] == "not responding (no heartbeat for 40 s)"


def test_missing_and_garbled_files(tmp_path: Path) -> None:
    assert read_health(tmp_path / "none.json")[0] == "no health reported"
    bad = tmp_path / "bad.json"
    bad.write_text('{"role": 1')
    assert read_health(bad)[0].startswith("unreadable health")


def test_a_role_is_ready_only_while_every_part_it_needs_is(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    health = Health("unit-c", path)
    health.needs("verdict reader", "exec answerer")
    health.part("verdict reader")
    assert _gauge("unit-c") == 0
    assert read_health(path)[0] == "not ready: exec answerer: starting"
    health.part("exec answerer")
    assert _gauge("unit-c") == 1
    health.part("exec answerer", "gone (execs go ahead unheld)")
    assert read_health(path)[0] == "not ready: exec answerer: gone (execs go ahead unheld)"
    health.part("exec answerer")
    assert read_health(path)[0] == "ready"


def test_a_role_whose_stop_hangs_is_ended_non_zero() -> None:
    import subprocess
    import sys

    hangs = ("import time\nfrom transport import exit_unless_stopped\n"
             "exit_unless_stopped('a test', grace_s=0.3, code=3)\ntime.sleep(60)\n")
    done = subprocess.run([sys.executable, "-c", hangs], capture_output=True, text=True, check=False,
                          timeout=30)
    assert done.returncode == 3
    assert "still running 0 s after a test: exiting" in done.stderr
