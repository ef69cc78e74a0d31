"""How incidents look to a SIEM: NeuVector-field JSON, ArcSight CEF, and RFC 5424 syslog lines.

Pure functions, so every escaping rule is tested on hostile input without a network.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from schemas import Incident, Level, to_plain

__all__ = ["cef", "incident_json", "severity", "syslog_5424"]

# RFC 5424 severities: 2 critical, 4 warning, 6 informational.
_SYSLOG_SEVERITY = {Level.CRITICAL: 2, Level.WARNING: 4, Level.INFO: 6}
# CEF severities 0-10.
_CEF_SEVERITY = {Level.CRITICAL: 9, Level.WARNING: 6, Level.INFO: 3}


def severity(level: Level) -> int:
    return _SYSLOG_SEVERITY[level]


def incident_json(incident: Incident) -> bytes:
    """The incident with NeuVector's field names, as one JSON object."""
    return orjson.dumps(to_plain(incident))


def _cef_header(text: str) -> str:
    # In the header, backslashes and pipes are escaped; line breaks are not allowed.
    return (text.replace("\\", "\\\\").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def _cef_value(text: str) -> str:
    # In extension values, backslashes and equals signs are escaped; line breaks become \n.
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n"))


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
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_5424(incident: Incident, body: str | bytes, *, hostname: str,
                app: str = "procwarden", facility: int = 1) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP - MSGID [SD] MSG`."""
    pri = facility * 8 + severity(incident.level)
    ts = datetime.fromtimestamp(incident.reported_timestamp, tz=UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    host = (hostname or "-").replace(" ", "_")[:255]
    sd = (f'[procwarden@32473 group="{_sd_value(incident.group)}" '
          f'action="{_sd_value(incident.action.value)}" id="{_sd_value(incident.id)}"]')
    msg = body if isinstance(body, bytes) else body.encode()
    msgid = incident.name.replace(" ", "_")[:32]
    return f"<{pri}>1 {ts} {host} {app} - {msgid} {sd} ".encode() + msg

