"""SIEM forwarding to a real rsyslog (TCP and TLS) and to a local webhook."""

from __future__ import annotations

import http.server
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from schemas import Incident, Level
from schemas.connections import KafkaConnection
from schemas.records import replace
from schemas.topics import SECURITY_EVENTS
from sinks.siem.forwarder import Destination, SiemForwarder
from sinks.siem.transports import WebhookTransport, syslog_transport
from tests.integration.streamkit import Pipeline, free_port
from tests.unit.test_siem_formats import BASE, _ext


@pytest.fixture
def pipe(kafka: KafkaConnection, tmp_path: Path) -> Pipeline:
    return Pipeline(kafka, tmp_path)


def _certs(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[dict[str, object]]:
    """rsyslogd (Debian) listening on plain TCP and on TLS, writing raw messages to a file."""
    assert shutil.which("rsyslogd"), "rsyslog is missing: ./pw installs it"
    tcp_port, tls_port = free_port(), free_port()
    cert, key = _certs(tmp_path)
    out = tmp_path / "received.log"
    conf = tmp_path / "rsyslog.conf"
    (tmp_path / "work").mkdir()
    conf.write_text(f"""
global(workDirectory="{tmp_path}/work" maxMessageSize="64k"
       DefaultNetstreamDriverCAFile="{cert}" DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" MaxSessions="50")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="anon")
input(type="imtcp" port="{tcp_port}" address="127.0.0.1")
input(type="imtcp" port="{tls_port}" address="127.0.0.1" StreamDriver.Name="gtls"
      StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{out}" template="raw")
""")
    with open(tmp_path / "rsyslogd.log", "wb") as log:
        proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i",
                                 str(tmp_path / "pid")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", tls_port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "rsyslogd.log").read_text()
            time.sleep(0.1)
    yield {"tcp": tcp_port, "tls": tls_port, "ca": str(cert), "out": out}
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def _lines(path: Path, expected: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) >= expected:
                return lines
        time.sleep(0.1)
    return lines


def _run(forwarder: SiemForwarder, until: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    forwarder.run(lambda: forwarder.forwarded >= until or time.monotonic() > deadline)
    forwarder.close()


def _incident(i: int, level: Level = Level.WARNING, group: str = "nv.web.demo") -> Incident:

    return replace(BASE, id=f"inc-{i}", level=level, group=group,
                               proc_cmd=f"sh -c 'echo {i} | nc x 1' --token=a=b\nnext")


def test_syslog_tcp_and_tls_json_and_cef(pipe: Pipeline, rsyslog: dict[str, object]) -> None:
    for i in range(20):
        pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(i))
    pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(99, Level.INFO))  # filtered
    pipe.send(SECURITY_EVENTS.name, "other", _incident(98, group="nv.other.x"))  # filtered
    tcp = Destination("tcp", syslog_transport(f"tcp://127.0.0.1:{rsyslog['tcp']}"), "json",
                      hostname="node-1")
    tls = Destination("tls", syslog_transport(f"tls://127.0.0.1:{rsyslog['tls']}",
                                              ca_file=str(rsyslog["ca"])), "cef")
    forwarder = SiemForwarder(pipe.kafka, [tcp, tls], group_id=f"siem-{pipe.prefix}",
                              groups=frozenset({"nv.web.demo"}))
    _run(forwarder, 20)
    lines = _lines(rsyslog["out"], 40)  # type: ignore[arg-type]
    assert len(lines) == 40
    json_lines = [ln for ln in lines if "{" in ln]
    cef_lines = [ln for ln in lines if "CEF:0|" in ln]
    assert len(json_lines) == 20 and len(cef_lines) == 20
    first = json_lines[0]
    assert first.startswith("<12>1 2023-11-14T22:13:20Z node-1 procwarden - ")
    payload = orjson.loads(first[first.index("{"):])
    assert payload["group"] == "nv.web.demo" and payload["action"] == "deny"
    assert payload["proc_cmd"].endswith("--token=a=b\nnext")
    ids = sorted(_ext(ln[ln.index("CEF:0|"):])["externalId"] for ln in cef_lines)
    assert ids == sorted(f"inc-{i}" for i in range(20))
    assert all(_ext(ln[ln.index("CEF:0|"):])["cmd"].endswith("--token=a=b\nnext")
               for ln in cef_lines)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[list[dict[str, object]]]] = []
    fail_first: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        _Hook.received.append(orjson.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_webhook_retries_until_it_is_taken(pipe: Pipeline) -> None:
    _Hook.received, _Hook.fail_first = [], 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for i in range(5):
            pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(i, Level.CRITICAL))
        hook = Destination("webhook", WebhookTransport(
            f"http://127.0.0.1:{server.server_address[1]}/incidents"), "json", syslog=False)
        forwarder = SiemForwarder(pipe.kafka, [hook], group_id=f"hook-{pipe.prefix}",
                                  max_backoff=0.5)
        _run(forwarder, 5)
    finally:
        server.shutdown()
        server.server_close()
    got = [i for batch in _Hook.received for i in batch]
    assert sorted(i["id"] for i in got) == [f"inc-{i}" for i in range(5)]  # type: ignore[type-var]
    assert all(i["level"] == "CRITICAL" for i in got)


def test_a_down_siem_loses_nothing(pipe: Pipeline, rsyslog: dict[str, object],
                                   tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    for i in range(10):
        pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(i))
    dest = Destination("late", syslog_transport(f"tcp://127.0.0.1:{port}"), "json")
    forwarder = SiemForwarder(pipe.kafka, [dest], group_id=f"late-{pipe.prefix}",
                              max_backoff=0.5)
    runner = threading.Thread(target=_run, args=(forwarder, 10, 60.0))
    runner.start()
    time.sleep(2.0)
    assert forwarder.forwarded == 0 and runner.is_alive()
    # The SIEM comes up: a plain TCP listener that collects what arrives.
    import socket

    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(30)
    conn, _ = server.accept()
    data = b""
    conn.settimeout(10)
    while data.count(b"<12>1 ") < 10:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    runner.join(30)
    conn.close()
    server.close()
    assert data.count(b"<12>1 ") == 10 and forwarder.forwarded == 10


def test_the_siem_command(pipe: Pipeline, rsyslog: dict[str, object], tmp_path: Path) -> None:
    import os
    import sys

    from tests.integration.streamkit import ROOT

    for i in range(3):
        pipe.send(SECURITY_EVENTS.name, "nv.web.demo", _incident(i))
    env = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
           "SIEM_SYSLOG_URL": f"tls://127.0.0.1:{rsyslog['tls']}", "SIEM_CA_FILE": rsyslog["ca"],
           "SIEM_SYSLOG_FORMAT": "cef", "SIEM_GROUP_ID": f"cmd-{pipe.prefix}",
           "SIEM_METRICS_PORT": str(free_port())}
    with open(tmp_path / "siem.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "procwarden.cli", "siem"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)  # type: ignore[arg-type]
    try:
        lines = _lines(rsyslog["out"], 3)  # type: ignore[arg-type]
        assert len(lines) == 3 and all("CEF:0|procwarden|" in ln for ln in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "siem.log").read_text()


def test_repeated_incidents_are_aggregated(pipe: Pipeline, rsyslog: dict[str, object]) -> None:

    loop = replace(_incident(0), proc_cmd="sh -c evil")
    for i in range(5):  # the same denied exec, again and again
        pipe.send(SECURITY_EVENTS.name, "nv.web.demo", replace(
            loop, id=f"loop-{i}", reported_timestamp=loop.reported_timestamp + i))
    pipe.send(SECURITY_EVENTS.name, "nv.web.demo",
              replace(_incident(7), proc_path="/usr/bin/other"))  # not a repeat
    tcp = Destination("tcp", syslog_transport(f"tcp://127.0.0.1:{rsyslog['tcp']}"), "json")
    forwarder = SiemForwarder(pipe.kafka, [tcp], group_id=f"siem-{pipe.prefix}",
                              aggregate_seconds=1.0)
    _run(forwarder, 2)
    lines = _lines(rsyslog["out"], 2)  # type: ignore[arg-type]
    payloads = [orjson.loads(ln[ln.index("{"):]) for ln in lines]
    assert sorted(p["count"] for p in payloads) == [1, 5]
    folded = next(p for p in payloads if p["count"] == 5)
    assert folded["id"] == "loop-0"
    assert folded["aggregation_from"] == loop.reported_timestamp
    assert folded["reported_timestamp"] == loop.reported_timestamp + 4
