"""The stream worker on the real Kafka: learning, alerts, blocks, precedence, restarts, DLQ."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import (
    Action,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    Decision,
    DlqEntry,
    ExecEvent,
    FileEvent,
    FileOp,
    GroupConfig,
    GroupPolicy,
    Incident,
    ProcessSnapshot,
    ProfileChange,
    ProfilePatch,
    RuleChange,
    ServiceConfig,
    Verdict,
    Workload,
    WorkloadKind,
)
from schemas.connections import KafkaConnection
from schemas.topics import (
    DLQ,
    EXEC,
    FILE,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
    verdict_partition,
)
from tests.integration.streamkit import NODE, Pipeline

WEB = "nv.web.demo"
WORKLOAD = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node=NODE, name="web",
                    namespace="demo", service="web", image="busybox:1.36")


@pytest.fixture
def pipeline(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka, tmp_path)
    yield p
    p.stop_workers()


def exec_event(path: str, pid: int, **kw: object) -> ExecEvent:
    name = path.rsplit("/", 1)[-1]
    return ExecEvent(workload_id=WORKLOAD.id, pid=pid, path=path, name=name, argv=(name,),
                     user="root", **kw)  # type: ignore[arg-type]


def decision_for(p: Pipeline, event_id: str, timeout: float = 30.0) -> Decision:
    env, _ = p.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                        and e.payload.event_id == event_id, timeout)
    assert isinstance(env.payload, Decision)
    return env.payload


def policy_where(p: Pipeline, group: str, test: object) -> GroupPolicy:
    env, _ = p.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                        and e.payload.name == group and test(e.payload))  # type: ignore[operator]
    assert isinstance(env.payload, GroupPolicy)
    return env.payload


def admin(p: Pipeline, group: str, payload: object) -> None:
    p.send(POLICY_UPDATES.name, group, payload)


def test_discover_monitor_protect(pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    learned = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 10))
    d = decision_for(p, learned.event_id)
    assert (d.verdict, d.reason, d.group) == (Verdict.LEARN, "learn", WEB)
    policy = policy_where(p, WEB, lambda g: any(r.name == "ls" for r in g.rules))
    assert [r.path for r in policy.rules] == ["/bin/ls"]
    changes = p.read_all(PROFILE_CHANGES.name, settle=1.0)
    assert any(isinstance(c.payload, ProfileChange) and c.payload.change.value == "rule_learned"
               and c.payload.cause_event_id == learned.event_id for c in changes)

    admin(p, WEB, ServiceConfig(services=("web.demo",), profile_mode="Monitor"))
    policy_where(p, WEB, lambda g: g.mode.value == "Monitor")
    cat = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/cat", 11))
    d = decision_for(p, cat.event_id)
    assert (d.verdict, d.would_block) == (Verdict.ALERT, True)
    incident, _ = p.wait_for(SECURITY_EVENTS.name, lambda e: isinstance(e.payload, Incident)
                             and e.payload.proc_path == "/bin/cat")
    assert isinstance(incident.payload, Incident)
    assert incident.payload.name == "Process.Profile.Violation"
    assert incident.payload.message.endswith("not a listed family process")
    assert decision_for(p, p.send(EXEC.name, WORKLOAD.id,
                                  exec_event("/bin/ls", 12)).event_id).verdict is Verdict.ALLOW

    admin(p, WEB, ServiceConfig(services=("web.demo",), profile_mode="Protect"))
    policy_where(p, WEB, lambda g: g.mode.value == "Protect")
    nc = p.send(EXEC.name, WORKLOAD.id, exec_event("/usr/bin/nc", 13, start_time=777))
    partition = verdict_partition(NODE, VERDICTS.partitions)
    env, msg = p.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                          and e.payload.event_id == nc.event_id, partitions=[partition])
    assert isinstance(env.payload, Decision)
    assert (env.payload.verdict, env.payload.pid, env.payload.start_time) == (Verdict.BLOCK, 13,
                                                                             777)
    assert msg.partition() == partition and msg.key() == NODE.encode()


def test_custom_deny_beats_learned_allow_and_edits_apply_to_the_next_event(
        pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/usr/bin/wget", 20)).event_id)
    policy_where(p, WEB, lambda g: any(r.name == "wget" for r in g.rules))
    admin(p, WEB, ServiceConfig(services=("web.demo",), profile_mode="Protect"))
    admin(p, "lockdown", GroupConfig(name="lockdown", criteria=(
        Criterion(CriteriaKey.NAMESPACE, CriteriaOp.EQ, "demo"),)))
    admin(p, "lockdown", ProfilePatch(group="lockdown", process_change_list=(
        RuleChange("wget", "", "deny"),)))
    policy_where(p, "lockdown", lambda g: any(r.action is Action.DENY for r in g.rules))
    policy_where(p, WEB, lambda g: g.mode.value == "Protect")
    d = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/usr/bin/wget", 21)).event_id)
    assert (d.verdict, d.rule_group) == (Verdict.BLOCK, "lockdown")
    # An edit takes effect for the next event: allow it in the custom group instead.
    admin(p, "lockdown", ProfilePatch(group="lockdown", process_change_list=(
        RuleChange("wget", "", "allow"),)))
    policy_where(p, "lockdown", lambda g: any(r.action is Action.ALLOW for r in g.rules))
    d = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/usr/bin/wget", 22)).event_id)
    assert (d.verdict, d.rule_group) == (Verdict.ALLOW, "lockdown")


def test_policy_survives_a_worker_restart_and_learning_is_idempotent(
        pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    first = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/date", 30))
    second = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/date", 31))
    decision_for(p, first.event_id)
    decision_for(p, second.event_id)
    admin(p, WEB, ServiceConfig(services=("web.demo",), profile_mode="Protect"))
    policy_where(p, WEB, lambda g: g.mode.value == "Protect")
    time.sleep(1.5)
    latest: dict[str, GroupPolicy] = {}
    for env in p.read_all(POLICY.name, settle=1.0):
        if isinstance(env.payload, GroupPolicy):
            latest[env.payload.name] = env.payload
    assert [(r.name, r.path) for r in latest[WEB].rules] == [("date", "/bin/date")]

    p.stop_workers()
    p.start_worker()
    d = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/date", 32)).event_id)
    assert (d.verdict, d.mode.value if d.mode else "") == (Verdict.ALLOW, "Protect")
    d = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/true", 33)).event_id)
    assert d.verdict is Verdict.BLOCK


def test_process_state_survives_a_worker_restart(pipeline: Pipeline) -> None:
    """A drifted file stays drift for a restarted worker, as it would have for the old one."""
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    policy_where(p, WEB, lambda g: True)  # its learned group exists
    admin(p, WEB, ProfilePatch(WEB, process_change_list=(
        RuleChange("app", "/opt/app", "allow"),)))
    admin(p, WEB, ServiceConfig(services=("web.demo",), profile_mode="Protect",
                                baseline_profile="zero-drift"))
    policy_where(p, WEB, lambda g: g.mode.value == "Protect" and g.rules)
    before = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/opt/app", 50)).event_id)
    assert before.verdict is Verdict.ALLOW
    # The image's program is overwritten (seen after the fact: not a held write).
    drift = p.send(FILE.name, WORKLOAD.id, FileEvent(WORKLOAD.id, FileOp.MODIFY, "/opt/app",
                                                      executable=True, from_image=True, pid=51))
    assert decision_for(p, drift.event_id).reason == "drift:modify"
    snap, _ = p.wait_for(PROCESS_STATE.name, lambda e: isinstance(e.payload, ProcessSnapshot)
                         and "/opt/app" in e.payload.drift)
    assert snap.payload.workload_id == WORKLOAD.id  # type: ignore[union-attr]

    p.stop_workers()
    p.start_worker()
    # Its collector cannot tell (origin image: no overlay to compare): the worker remembers.
    after = decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/opt/app", 52)).event_id)
    assert (after.verdict, after.reason) == (Verdict.BLOCK, "violation:R5")


def test_malformed_events_go_to_the_dlq_and_the_worker_goes_on(pipeline: Pipeline) -> None:
    p = pipeline
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    p.send_raw(EXEC.name, WORKLOAD.id, b'{"schema_version": 1, "kind": "exec"')
    p.send_raw(EXEC.name, WORKLOAD.id, b'{"schema_version": 1, "event_id": "x", "node": "n",'
                                       b' "cluster": "c", "ts": 1, "kind": "exec", "payload":'
                                       b' {"workload_id": "c-web-1", "pid": "ten",'
                                       b' "path": "/bin/ls"}}')
    ghost = p.send(EXEC.name, "ghost", ExecEvent(workload_id="ghost", pid=1, path="/bin/ls"))
    good = p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 40))
    assert decision_for(p, good.event_id).verdict is Verdict.LEARN
    entries = [e.payload for e in p.read_all(DLQ.name, settle=4.0)
               if isinstance(e.payload, DlqEntry)]
    errors = sorted(e.error for e in entries)
    assert any("not valid JSON" in e for e in errors), errors
    assert any("payload.pid: expected an integer" in e for e in errors), errors
    assert any("unknown workload 'ghost'" in e for e in errors), errors
    for entry in entries:
        assert entry.topic == p.topic(EXEC.name) and entry.offset >= 0
    assert ghost.event_id in " ".join(e.value for e in entries)
