"""Rows for ClickHouse: one function per table from the wire records, and the table columns.

Timestamps are `DateTime('UTC')` plus a millisecond column (DateTime64 does not exist on the
Debian server, 18.16). Booleans are UInt8; optional enums are empty strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas import CollectorReport, Decision, Envelope, Incident, ProfileChange, Workload

__all__ = ["TABLES", "Table", "table_for"]


def _dt(ts: float) -> int:
    # DateTime columns take the epoch second as it is: clickhouse-driver converts datetime
    # objects one by one through pytz, an eighth of the sink's time.
    return int(ts)


def _ms(ts: float) -> int:
    return round((ts - int(ts)) * 1000) % 1000


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    row: Callable[[Envelope], tuple[Any, ...]]


def _decision_row(env: Envelope) -> tuple[Any, ...]:
    d = env.payload
    assert isinstance(d, Decision)
    i = d.incident
    return (_dt(d.ts), _ms(d.ts), d.event_id, d.event_kind.value, d.workload_id, d.node,
            d.group, d.verdict.value, d.reason, d.rule_uuid, d.rule_group,
            d.mode.value if d.mode else "", d.baseline.value if d.baseline else "",
            int(d.would_block), int(d.suppressed), d.pid, d.start_time, d.name, d.path, d.user,
            d.policy_version, i.name if i else "", i.level.value if i else "", i.id if i else "",
            i.message if i else "")


def _incident_row(env: Envelope) -> tuple[Any, ...]:
    i = env.payload
    assert isinstance(i, Incident)
    return (_dt(i.reported_timestamp), i.id, i.name, i.level.value, i.reported_at,
            i.cluster_name, i.host_id, i.host_name, i.enforcer_id, i.enforcer_name,
            i.workload_id, i.workload_name, i.workload_domain, i.workload_image,
            i.workload_service, i.proc_name, i.proc_path, i.proc_cmd, i.proc_real_uid,
            i.proc_effective_uid, i.proc_real_user, i.proc_effective_user, i.proc_parent_name,
            i.proc_parent_path, i.file_path, i.file_name, int(i.conn_ingress), i.action.value,
            i.group, i.rule_id, i.aggregation_from, i.count, i.message)


def _change_row(env: Envelope) -> tuple[Any, ...]:
    c = env.payload
    assert isinstance(c, ProfileChange)
    r = c.rule
    return (_dt(c.ts), _ms(c.ts), c.group, c.change.value, c.version, c.actor,
            r.name if r else "", r.path if r else "", r.action.value if r else "",
            r.cfg_type.value if r else "", r.uuid if r else "", list(r.users) if r else [],
            c.detail, c.cause_event_id, env.event_id)


def _workload_row(env: Envelope) -> tuple[Any, ...]:
    w = env.payload
    assert isinstance(w, Workload)
    return (_dt(env.ts), w.id, w.kind.value, w.node, w.name, w.image, w.namespace, w.service,
            w.pod, list(w.labels), list(w.labels.values()), int(w.system), w.state.value)


def _report_row(env: Envelope) -> tuple[Any, ...]:
    r = env.payload
    assert isinstance(r, CollectorReport)
    reasons = sorted(r.lost)
    return (_dt(env.ts), r.node, _dt(r.started_at), r.execs, r.reported, reasons,
            [r.lost[k] for k in reasons], r.spool_bytes, env.event_id)


TABLES: dict[type, Table] = {
    Decision: Table("events", (
        "ts", "ts_ms", "event_id", "event_kind", "workload_id", "node", "group_name", "verdict",
        "reason", "rule_uuid", "rule_group", "mode", "baseline", "would_block", "suppressed",
        "pid", "start_time", "name", "path", "user", "policy_version", "incident_name",
        "incident_level", "incident_id", "message"), _decision_row),
    Incident: Table("security_events", (
        "ts", "id", "name", "level", "reported_at", "cluster_name", "host_id", "host_name",
        "enforcer_id", "enforcer_name", "workload_id", "workload_name", "workload_domain",
        "workload_image", "workload_service", "proc_name", "proc_path", "proc_cmd",
        "proc_real_uid", "proc_effective_uid", "proc_real_user", "proc_effective_user",
        "proc_parent_name", "proc_parent_path", "file_path", "file_name", "conn_ingress",
        "action", "group_name", "rule_id", "aggregation_from", "count", "message"), _incident_row),
    ProfileChange: Table("profile_changes", (
        "ts", "ts_ms", "group_name", "change", "version", "actor", "rule_name", "rule_path",
        "rule_action", "rule_source", "rule_uuid", "rule_users", "detail", "cause_event_id",
        "change_id"), _change_row),
    Workload: Table("workloads", (
        "ts", "id", "kind", "node", "name", "image", "namespace", "service", "pod",
        "label_keys", "label_values", "system", "state"), _workload_row),
    CollectorReport: Table("collector_reports", (
        "ts", "node", "started_at", "execs", "reported", "loss_reasons", "loss_counts",
        "spool_bytes", "report_id"), _report_row),
}


def table_for(env: Envelope) -> Table | None:
    return TABLES.get(type(env.payload))
