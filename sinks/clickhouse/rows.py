"""The ClickHouse tables the sink fills: each table's columns, and where in the wire records
each column's values come from.

Timestamps are `DateTime('UTC')` plus a millisecond column (DateTime64 does not exist on the
Debian server, 18.16). Booleans are UInt8; optional enums are empty strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from schemas import (
    CollectorReport,
    Decision,
    Envelope,
    HoldSettings,
    Incident,
    ProfileChange,
    Workload,
)

__all__ = ["NOT_STORED", "TABLES", "Table", "table_for"]


# A column is a payload attribute (its name) or a function of the batch's envelopes and payloads.
Column = str | Callable[[Sequence[Envelope], list[Any]], list[Any]]


@dataclass(frozen=True, eq=False)  # one object per table: compared and hashed by identity
class Table:
    """A ClickHouse table and how its columns come from a batch of envelopes: built column by
    column (clickhouse-driver inserts columns), not row by row and then transposed, which cost
    the sink more than decoding the messages did."""

    name: str
    columns: tuple[str, ...]
    sources: tuple[Column, ...]

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.sources):
            raise ValueError(f"{self.name}: {len(self.columns)} columns, "
                             f"{len(self.sources)} sources")

    def values(self, envs: Sequence[Envelope]) -> list[list[Any]]:
        """One list per column, in `columns` order."""
        payloads = [env.payload for env in envs]
        return [list(map(attrgetter(source), payloads)) if isinstance(source, str)
                else source(envs, payloads) for source in self.sources]

    def row(self, env: Envelope) -> tuple[Any, ...]:
        """One envelope's row (for SQL literals and tests)."""
        return tuple(column[0] for column in self.values([env]))


# DateTime columns take the epoch second as it is: clickhouse-driver converts datetime objects
# one by one through pytz, an eighth of the sink's time.

# A time is rounded to the millisecond once, and its second and millisecond columns are both
# cut from that: 1.9996 is 2 s + 0 ms (apart, they read as 1 s + 0 ms, a second early).

def _seconds(name: str) -> Column:
    get = attrgetter(name)
    return lambda envs, ps: [round(get(p) * 1000) // 1000 for p in ps]


def _millis(name: str) -> Column:
    get = attrgetter(name)
    return lambda envs, ps: [round(t * 1000) % 1000 for t in map(get, ps)]


def _enum(name: str) -> Column:
    get = attrgetter(name)
    return lambda envs, ps: [e.value for e in map(get, ps)]


def _optional_enum(name: str) -> Column:
    get = attrgetter(name)
    return lambda envs, ps: [e.value if e is not None else "" for e in map(get, ps)]


def _flag(name: str) -> Column:
    get = attrgetter(name)
    return lambda envs, ps: [int(get(p)) for p in ps]


def _of(record: str, then: Callable[[Any], Any], default: Any = "") -> Column:
    """A value from an optional record field (a verdict's incident, a change's rule)."""
    get = attrgetter(record)
    return lambda envs, ps: [then(r) if r is not None else default for r in map(get, ps)]


def _envelope_seconds(envs: Sequence[Envelope], _: list[Any]) -> list[Any]:
    return [round(env.ts * 1000) // 1000 for env in envs]


def _envelope_id(envs: Sequence[Envelope], _: list[Any]) -> list[Any]:
    return [env.event_id for env in envs]


def _lost_reasons(envs: Sequence[Envelope], ps: list[Any]) -> list[Any]:
    return [sorted(r.lost) for r in ps]


def _lost_counts(envs: Sequence[Envelope], ps: list[Any]) -> list[Any]:
    return [[r.lost[k] for k in sorted(r.lost)] for r in ps]


def _table(name: str, *columns: tuple[str, Column]) -> Table:
    return Table(name, tuple(c for c, _ in columns), tuple(s for _, s in columns))


TABLES: dict[type, Table] = {
    Decision: _table(
        "events", ("ts", _seconds("ts")), ("ts_ms", _millis("ts")), ("event_id", "event_id"),
        ("event_kind", _enum("event_kind")), ("workload_id", "workload_id"), ("node", "node"),
        ("group_name", "group"), ("verdict", _enum("verdict")), ("reason", "reason"),
        ("rule_uuid", "rule_uuid"), ("rule_group", "rule_group"),
        ("mode", _optional_enum("mode")), ("baseline", _optional_enum("baseline")),
        ("would_block", _flag("would_block")), ("suppressed", _flag("suppressed")),
        ("pid", "pid"), ("start_time", "start_time"), ("name", "name"), ("path", "path"),
        ("user", "user"), ("policy_version", "policy_version"),
        ("incident_name", _of("incident", attrgetter("name"))),
        ("incident_level", _of("incident", lambda i: i.level.value)),
        ("incident_id", _of("incident", attrgetter("id"))),
        ("message", _of("incident", attrgetter("message")))),
    Incident: _table(
        "security_events", ("ts", _seconds("reported_timestamp")), ("id", "id"), ("name", "name"),
        ("level", _enum("level")), *((c, c) for c in (
            "reported_at", "cluster_name", "host_id", "host_name", "enforcer_id",
            "enforcer_name", "workload_id", "workload_name", "workload_domain", "workload_image",
            "workload_service", "proc_name", "proc_path", "proc_cmd", "proc_real_uid",
            "proc_effective_uid", "proc_real_user", "proc_effective_user", "proc_parent_name",
            "proc_parent_path", "file_path", "file_name")),
        ("conn_ingress", _flag("conn_ingress")), ("action", _enum("action")),
        ("group_name", "group"), ("rule_id", "rule_id"), ("aggregation_from", "aggregation_from"),
        ("count", "count"), ("message", "message")),
    ProfileChange: _table(
        "profile_changes", ("ts", _seconds("ts")), ("ts_ms", _millis("ts")),
        ("group_name", "group"), ("change", _enum("change")), ("version", "version"),
        ("actor", "actor"), ("rule_name", _of("rule", attrgetter("name"))),
        ("rule_path", _of("rule", attrgetter("path"))),
        ("rule_action", _of("rule", lambda r: r.action.value)),
        ("rule_source", _of("rule", lambda r: r.cfg_type.value)),
        ("rule_uuid", _of("rule", attrgetter("uuid"))),
        ("rule_users", _of("rule", lambda r: list(r.users), default=[])),
        ("detail", "detail"), ("cause_event_id", "cause_event_id"),
        ("change_id", _envelope_id)),
    Workload: _table(
        "workloads", ("ts", _envelope_seconds), ("id", "id"), ("kind", _enum("kind")),
        ("node", "node"), ("name", "name"), ("image", "image"), ("namespace", "namespace"),
        ("service", "service"), ("pod", "pod"),
        ("label_keys", lambda envs, ps: [list(w.labels) for w in ps]),
        ("label_values", lambda envs, ps: [list(w.labels.values()) for w in ps]),
        ("system", _flag("system")), ("state", _enum("state"))),
    CollectorReport: _table(
        "collector_reports", ("ts", _envelope_seconds), ("node", "node"),
        ("started_at", _seconds("started_at")), ("execs", "execs"), ("reported", "reported"),
        ("loss_reasons", _lost_reasons), ("loss_counts", _lost_counts),
        ("spool_bytes", "spool_bytes"), ("report_id", _envelope_id)),
}


# Records the sink reads on its topics and keeps out of ClickHouse on purpose, not as misplaced:
# hold settings are a control message to one collector, decide nothing, and the policy change
# that sent them is a row of `profile_changes` already (docs/soc.md).
NOT_STORED: frozenset[type] = frozenset({HoldSettings})


def table_for(env: Envelope) -> Table | None:
    return TABLES.get(type(env.payload))
