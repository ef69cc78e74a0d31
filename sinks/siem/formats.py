"""How incidents look to a SIEM: NeuVector-field JSON, ArcSight CEF, and RFC 5424 syslog lines.

Pure functions, so every escaping rule is tested on hostile input without a network.

What a workload controls (its command line, paths, names) reaches terminals, log viewers and
SIEM parsers, so no control character travels raw: C0 and C1 controls, DEL and the Unicode line
and paragraph separators (U+2028/U+2029) are written `\\uXXXX` (in JSON a plain string escape;
in CEF and syslog structured data an escape no literal text can produce, since a literal
backslash is doubled). `bounded` keeps every rendered incident under a destination's size,
cutting the long fields first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import get_type_hints

import orjson

from schemas import Incident, Level, to_plain
from schemas.records import replace

__all__ = ["LONG_FIELDS", "MIN_MAX_BYTES", "bounded", "cef", "escape_controls", "incident_json",
           "severity", "syslog_5424"]

# Each as `\\uXXXX`, by translation tables: one pass in C, however many a field holds (a
# substitution callback per character took a second for a field of a few hundred kilobytes).
_SEPARATORS = (0x2028, 0x2029)
_C1_AND_DEL = (*range(0x7F, 0xA0), *_SEPARATORS)
_ANY_CONTROL = {c: f"\\u{c:04x}" for c in (*range(0x20), *_C1_AND_DEL)}
# C0 but the line breaks each format handles itself.
_CONTROLS = {c: e for c, e in _ANY_CONTROL.items() if c not in (0x0A, 0x0D)}
# orjson escapes C0 itself, not DEL, C1 or the separators.
_JSON_CONTROLS = {c: _ANY_CONTROL[c] for c in _C1_AND_DEL}
_JSON_NEEDS_ESCAPES = re.compile(b"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def escape_controls(text: str) -> str:
    """Every control character (and U+2028/U+2029) of `text` as `\\uXXXX`."""
    return text.translate(_ANY_CONTROL)


# RFC 5424 severities: 2 critical, 4 warning, 6 informational.
_SYSLOG_SEVERITY = {Level.CRITICAL: 2, Level.WARNING: 4, Level.INFO: 6}
# CEF severities 0-10.
_CEF_SEVERITY = {Level.CRITICAL: 9, Level.WARNING: 6, Level.INFO: 3}


def severity(level: Level) -> int:
    return _SYSLOG_SEVERITY[level]


def incident_json(incident: Incident) -> bytes:
    """The incident with NeuVector's field names, as one JSON object (ASCII controls, C1 and
    U+2028/U+2029 as escapes: the same JSON value, safe in a log line)."""
    text = orjson.dumps(to_plain(incident))
    if _JSON_NEEDS_ESCAPES.search(text) is None:
        return text
    return text.decode().translate(_JSON_CONTROLS).encode()


def _cef_header(text: str) -> str:
    # In the header, backslashes and pipes are escaped; line breaks are not allowed.
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
            .translate(_CONTROLS))


def _cef_value(text: str) -> str:
    # In extension values, backslashes and equals signs are escaped; line breaks become \n.
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n").translate(_CONTROLS))


# CEF extension keys for the NeuVector fields a SOC filters on (others use custom strings).
_CEF_FIELDS = (
    ("rt", lambda i: str(i.reported_timestamp * 1000)),
    ("dvchost", lambda i: i.host_name),
    ("cs1Label", lambda i: "group"), ("cs1", lambda i: i.group),
    ("cs2Label", lambda i: "workload"), ("cs2", lambda i: i.workload_name),
    ("cs3Label", lambda i: "namespace"), ("cs3", lambda i: i.workload_domain),
    ("cs4Label", lambda i: "image"), ("cs4", lambda i: i.workload_image),
    ("cs5Label", lambda i: "rule_id"), ("cs5", lambda i: i.rule_id),
    ("cs6Label", lambda i: "cluster"), ("cs6", lambda i: i.cluster_name),
    ("sproc", lambda i: i.proc_name), ("filePath", lambda i: i.proc_path or i.file_path),
    ("suser", lambda i: i.proc_effective_user), ("suid", lambda i: str(i.proc_effective_uid)),
    ("act", lambda i: i.action.value), ("cnt", lambda i: str(i.count)),
    ("externalId", lambda i: i.id), ("msg", lambda i: i.message),
    ("cmd", lambda i: i.proc_cmd),
)


def cef(incident: Incident, *, vendor: str = "procwarden", product: str = "procwarden",
        version: str = "1") -> str:
    """`CEF:0|vendor|product|version|signature|name|severity|extensions`."""
    head = "|".join(_cef_header(x) for x in (
        vendor, product, version, incident.name, incident.message,
        str(_CEF_SEVERITY[incident.level])))
    ext = " ".join(f"{key}={_cef_value(get(incident))}" for key, get in _CEF_FIELDS
                   if get(incident) != "")
    return f"CEF:0|{head}|{ext}"


def _sd_value(text: str) -> str:
    return escape_controls(text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]"))


_NOT_PRINTABLE_ASCII = re.compile("[^!-~]")


def _header_token(text: str, size: int) -> str:
    # HOSTNAME and MSGID are printable US-ASCII without spaces (RFC 5424 §6).
    return _NOT_PRINTABLE_ASCII.sub("_", text)[:size] or "-"


def _timestamp(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "-"  # the NILVALUE: a time no calendar holds is not sent as one


def syslog_5424(incident: Incident, body: str | bytes, *, hostname: str,
                app: str = "procwarden", facility: int = 1) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP - MSGID [SD] MSG`."""
    pri = facility * 8 + severity(incident.level)
    ts = _timestamp(incident.reported_timestamp)
    host = _header_token(hostname, 255)
    sd = (f'[procwarden@32473 group="{_sd_value(incident.group)}" '
          f'action="{_sd_value(incident.action.value)}" id="{_sd_value(incident.id)}"]')
    msg = body if isinstance(body, bytes) else body.encode()
    msgid = _header_token(incident.name, 32)
    return f"<{pri}>1 {ts} {host} {app} - {msgid} {sd} ".encode() + msg



# -- a bound per destination ---------------------------------------------------------------------

MIN_MAX_BYTES = 4096  # an incident whose every text field is cut still fits
# Cut first: what a workload makes long (argv, paths); then any text field, longest first.
LONG_FIELDS = ("proc_cmd", "proc_path", "proc_parent_path", "file_path", "file_name",
               "proc_name", "proc_parent_name", "message")
_TEXT_FIELDS = tuple(name for name, tp in get_type_hints(Incident).items() if tp is str)


def bounded(render: Callable[[Incident], bytes], incident: Incident, max_bytes: int) -> bytes:
    """`render(incident)`, at most `max_bytes` long: fields are cut (each ending in
    `… [cut, N characters]`) before rendering, so no escape or framing is ever split.

    The long fields are cut first, all to one length (the longest lose the most); then, if the
    line is still too long, every text field in turn, longest first. Each character cut saves
    at least one byte of the rendering (escaping only grows one), so cutting by the excess plus
    the markers' bytes brings the line under the bound; a field the format does not show saves
    nothing, and the next one is cut.
    """
    line = render(incident)
    if len(line) <= max_bytes:
        return line
    incident = _cut_to(incident, LONG_FIELDS, len(line) - max_bytes)
    line = render(incident)
    rest = sorted(_TEXT_FIELDS, key=lambda n: -len(getattr(incident, n)))
    for name in rest:
        if len(line) <= max_bytes:
            break
        incident = _cut_to(incident, (name,), len(line) - max_bytes)
        line = render(incident)
    return line


def _marker(length: int) -> str:
    return f"… [cut, {length} characters]"


def _cut_to(incident: Incident, names: tuple[str, ...], over: int) -> Incident:
    """`incident` with the longest of `names` cut to one length, saving `over` bytes."""
    values = {n: v for n in names if (v := getattr(incident, n))}

    def saved(cap: int) -> int:
        return sum(max(0, len(v) - cap - len(_marker(len(v)).encode()))
                   for v in values.values() if len(v) > cap)

    low, high = 0, max(map(len, values.values()), default=0)
    if saved(low) < over:
        cap = 0  # not enough even with all of them cut: cut them all
    else:
        while low < high:  # the longest cap that saves enough
            mid = (low + high + 1) // 2
            low, high = (mid, high) if saved(mid) >= over else (low, mid - 1)
        cap = low
    changes = {}
    for name, value in values.items():
        if len(value) > cap:
            marker = _marker(len(value))
            cut = value[:cap] + marker if cap else marker
            changes[name] = cut if len(cut) < len(value) else ""
    return replace(incident, **changes) if changes else incident
