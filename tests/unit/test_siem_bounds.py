"""SIEM output that cannot break a receiver: control characters escaped, every incident bounded
per destination, long fields cut first with a visible marker (hostile input, no network)."""

from __future__ import annotations

import re

import orjson
import pytest

from schemas import Incident
from schemas.records import replace
from sinks.siem.formats import MIN_MAX_BYTES, bounded, cef, incident_json, syslog_5424
from sinks.siem.forwarder import TRUNCATED, Destination
from tests.unit.test_siem_formats import BASE, _ext

# ESC, VT, NUL, DEL, a C1 (CSI), U+2028 and U+2029: each can rewrite or split a line on a
# terminal or in a log viewer, or break JSON read as JavaScript.
HOSTILE_CONTROLS = "a\x1b[2Jb\x0bc\x00d\x7fe\x9bf\u2028g\u2029h"
RAW = ("\x1b", "\x0b", "\x00", "\x7f", "\x9b", "\u2028", "\u2029")


def _no_raw_controls(text: str) -> None:
    for ch in RAW:
        assert ch not in text, f"{ch!r} passed raw"


def test_cef_escapes_c0_c1_and_line_separators() -> None:
    hostile = replace(BASE, proc_cmd=HOSTILE_CONTROLS, message=f"m {HOSTILE_CONTROLS}",
                      proc_name="\x1bnc", workload_name="w\u2028x")
    line = cef(hostile)
    _no_raw_controls(line)
    assert "\n" not in line and "\r" not in line
    assert "cmd=a\\u001b[2Jb\\u000bc\\u0000d\\u007fe\\u009bf\\u2028g\\u2029h" in line
    assert line.split("|")[5] == "m a\\u001b[2Jb\\u000bc\\u0000d\\u007fe\\u009bf\\u2028g\\u2029h"
    # A literal backslash-u typed by the workload stays distinguishable: its backslash doubles.
    assert "cmd=\\\\u001b" in cef(replace(BASE, proc_cmd="\\u001b"))


def test_syslog_json_body_escapes_c1_and_line_separators() -> None:
    hostile = replace(BASE, proc_cmd=HOSTILE_CONTROLS, group="g\x1b\u2028")
    body = incident_json(hostile)
    line = syslog_5424(hostile, body, hostname="h\x1b").decode()
    _no_raw_controls(line)
    assert orjson.loads(body)["proc_cmd"] == HOSTILE_CONTROLS  # still the same JSON value
    assert 'group="g\\u001b\\u2028"' in line
    cef_line = syslog_5424(hostile, cef(hostile), hostname="h").decode()
    _no_raw_controls(cef_line)


def test_syslog_header_fields_are_printable_ascii() -> None:
    line = syslog_5424(replace(BASE, name="Proc\x1b\u2028Name é"), b"x", hostname="nöde\x00")
    head = line.decode().split(" [", 1)[0]
    assert re.fullmatch(r"<\d+>1 \S+ [!-~]+ procwarden - [!-~]+", head), head


@pytest.mark.parametrize("ts", [10**30, -(10**30), 2**63, -1])
def test_syslog_timestamps_out_of_range_are_nil(ts: int) -> None:
    # datetime.fromtimestamp raised OverflowError / OSError out of the forwarder.
    line = syslog_5424(replace(BASE, reported_timestamp=ts), b"x", hostname="h").decode()
    assert line.split(" ")[1] in ("-", "1969-12-31T23:59:59Z")


def _huge(cmd_len: int = 900_000) -> Incident:
    return replace(BASE, proc_cmd="A" * cmd_len + " --x=\x1b\u2028", proc_path="/p" * 10_000)


@pytest.mark.parametrize("fmt", ["json", "cef"])
@pytest.mark.parametrize("syslog", [True, False])
@pytest.mark.parametrize("limit", [MIN_MAX_BYTES, 8192, 65536])
def test_a_900_kb_command_line_is_cut_to_the_bound(fmt: str, syslog: bool, limit: int) -> None:
    dest = Destination("d", transport=None, format=fmt, syslog=syslog,  # type: ignore[arg-type]
                       max_bytes=limit)
    before = TRUNCATED.labels("d")._value.get()
    line = dest.render(_huge())
    assert len(line) <= limit
    assert TRUNCATED.labels("d")._value.get() == before + 1
    text = line.decode()
    _no_raw_controls(text)
    assert f"[cut, {len(_huge().proc_cmd)} characters]" in text  # the marker says what it was
    if fmt == "json":
        body = orjson.loads(text[text.index("{"):])  # still one whole JSON object
        assert body["proc_cmd"].startswith("AAAA") and body["id"] == "inc-1"
        assert body["group"] == "nv.web.demo"
    else:
        ext = _ext(text[text.index("CEF:0"):])
        assert ext["cmd"].startswith("AAAA") and ext["externalId"] == "inc-1"
    assert dest.render(BASE) == Destination("d", None, fmt, syslog).render(BASE)  # type: ignore[arg-type]


def test_the_long_fields_are_cut_before_the_others() -> None:
    big = replace(BASE, proc_cmd="c" * 50_000, message="m" * 3000, workload_name="w" * 3000)
    line = bounded(incident_json, big, 20_000)
    data = orjson.loads(line)
    assert len(line) <= 20_000
    assert data["message"] == "m" * 3000 and data["workload_name"] == "w" * 3000
    assert data["proc_cmd"].endswith("… [cut, 50000 characters]")
    # Everything long: the others go too, largest first, until the incident fits.
    every = replace(BASE, **{f: "x" * 5000 for f in ("message", "workload_name", "group",
                                                     "workload_image", "host_name")})
    small = bounded(incident_json, every, MIN_MAX_BYTES)
    assert len(small) <= MIN_MAX_BYTES and orjson.loads(small)["id"] == "inc-1"


def test_escaping_that_grows_a_field_is_still_bounded() -> None:
    # Each ESC is one character and six bytes once escaped.
    worst = replace(BASE, proc_cmd="\x1b" * 200_000, proc_path="\u2028" * 50_000)
    for render in (incident_json, lambda i: cef(i).encode(),
                   lambda i: syslog_5424(i, cef(i), hostname="h")):
        line = bounded(render, worst, 8192)
        assert len(line) <= 8192
        _no_raw_controls(line.decode())


def test_a_destination_bound_has_a_floor() -> None:
    with pytest.raises(ValueError):
        Destination("d", None, max_bytes=100)  # type: ignore[arg-type]
