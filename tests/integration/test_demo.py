"""The main job end to end: `procwarden demo`, non-interactively, with each step's outcome
checked in its output, in Kafka and in ClickHouse."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from procwarden.demo import LocalParts
from procwarden.roles import Roles
from procwarden.stack import Stack
from schemas import Decision, EventKind, Incident, Verdict
from schemas.connections import ClickHouseConnection
from schemas.topics import SECURITY_EVENTS, VERDICTS
from sinks.clickhouse.migrations import connect
from tests.integration.streamkit import ROOT, Pipeline

GROUP = "nv.web.demo"


def test_the_demo_story(stack: Stack, tmp_path: Path) -> None:
    started = time.time() - 1
    _, roles_before = LocalParts().running()
    try:
        run = subprocess.run([sys.executable, "-m", "procwarden.cli", "demo", "--pace", "0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600,
                             check=False)
        out = run.stdout
        assert run.returncode == 0, f"{out[-4000:]}\n{run.stderr[-4000:]}"
        # 1. Discover learned the app's processes.
        learned = out.split("learned profile of", 1)[1].split("==", 1)[0]
        for name in ("httpd", "sh", "sleep"):
            assert f" {name} " in learned, learned
        # 2. Monitor alerted, and let things run.
        monitor = out.split("== 2.", 1)[1].split("== 3.", 1)[0]
        assert "not from an image file" in monitor and "Tunnel detected" in monitor, monitor
        # 3. Protect denied before exec, killed nc, and the reverse shell is gone.
        protect = out.split("== 3.", 1)[1].split("== 4.", 1)[0]
        assert "/tmp/top: Operation not permitted" in protect, protect
        assert "nc exited 137" in protect and "sleep exited 0" in protect, protect
        assert "connection was closed" in protect, protect
        # 4. The SOC summary and the SIEM lines.
        assert "syslog line(s) for nv.web.demo" in out

        # The same outcomes, read back from the systems themselves (the sink may be a batch
        # behind the demo's last step).
        wanted = {("exec", "learn", "httpd", "/bin/busybox"),
                  ("exec_check", "block", "top", "/tmp/top"),
                  ("exec", "block", "nc", "/bin/busybox"),
                  ("exec", "alert", "sleep", "/tmp/sleep")}
        conn = ClickHouseConnection.from_env()
        rows: set[tuple[str, str, str, str]] = set()
        deadline = time.monotonic() + 30
        while not wanted <= rows and time.monotonic() < deadline:
            time.sleep(0.5)
            client = connect(conn)
            try:
                rows = set(client.execute(
                    f"SELECT event_kind, verdict, name, path FROM {conn.database}.events FINAL "
                    "WHERE group_name = %(g)s AND ts >= toDateTime(%(t)s)",
                    {"g": GROUP, "t": int(started)}))
            finally:
                client.disconnect()
        assert wanted <= rows, (wanted - rows, sorted(r for r in rows if r[0] != "file"), out)

        pipe = Pipeline(stack.kafka_connection, tmp_path, prefix="")
        tunnel, _ = pipe.wait_for(SECURITY_EVENTS.name, lambda e: isinstance(e.payload, Incident)
                                  and e.payload.group == GROUP and e.ts >= started
                                  and e.payload.name == "Container.Tunnel.Detected")
        assert isinstance(tunnel.payload, Incident) and tunnel.payload.level.value == "CRITICAL"
        denied, _ = pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                                  and e.ts >= started and e.payload.path == "/tmp/top"
                                  and e.payload.event_kind is EventKind.EXEC_CHECK)
        assert isinstance(denied.payload, Decision) and denied.payload.verdict is Verdict.BLOCK

        # --down stops the roles the demo started, not the stack it found running, and runs
        # no step of the demo again
        down = subprocess.run([sys.executable, "-m", "procwarden.cli", "demo", "--down"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
        assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
        assert "== " not in down.stdout and "collector: stopped" in down.stdout, down.stdout
        assert stack.status().up
        assert LocalParts().running()[1] == roles_before
    finally:
        Roles().down(lambda message: None)
