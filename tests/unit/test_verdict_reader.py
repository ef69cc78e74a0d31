"""The collector's verdict reader, message by message, with no Kafka: whatever a verdict-topic
message is, it is counted and the reader goes on (a collector may not write the DLQ); and a
verdict is acted on only if signed for this node, fresh, and answering an event this collector
published for that very process and workload (issue 22)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from collectors.enforcement.answerer_protocol import HoldMessage, ToAnswerer, VerdictMessage
from collectors.enforcement.enforcer import Enforcer, kill_if_same
from collectors.enforcement.exec_answerer import Hold
from collectors.enforcement.verdict_checks import ActedOn, RecentEvents, RefusalLog, protected_pids
from collectors.kernel.procfs import read_stat
from collectors.sensing.workloads import WorkloadResolver, host_workload_id
from collectors.settings import CollectorSettings
from schemas import (
    Decision,
    DecodeError,
    Envelope,
    EventKind,
    ExecCheck,
    ExecEvent,
    ExitEvent,
    FailMode,
    HoldSettings,
    StdioEvent,
    Verdict,
    decode_envelope,
    encode,
)
from schemas.connections import KafkaConnection
from transport import Health
from transport.signing import Keyring, Signer

NODE = "node-unit"
TOPIC = "procwarden.verdicts"
HOST = host_workload_id(NODE)
RING = Keyring.generate()
STREAMS = Signer.for_streams(RING)


def _enforcer(tmp_path: Path, **settings: Any) -> Enforcer:
    config = CollectorSettings(node=NODE, state_dir=tmp_path, **{"dry_run": True, **settings})
    return Enforcer(config, KafkaConnection(), WorkloadResolver(node=NODE),
                    lambda *a, **k: "", health=Health("unit-collector"),
                    cannot_go_on=lambda why: None, keys=RING.node_keys(NODE))


def _wire(payload: object) -> bytes:
    return encode(Envelope.wrap(payload, event_id="v1", node=NODE, ts=time.time(),  # type: ignore[arg-type]
                                cluster="test"))


def _block(pid: int) -> Decision:
    return Decision(event_id="e1", event_kind=EventKind.EXEC, workload_id="w", node=NODE,
                    verdict=Verdict.BLOCK, reason="violation:R0", pid=pid)


def _count(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_dead_letters_total", {
        "stage": "collector", "topic": TOPIC, "reason": reason}) or 0.0


def _signed(value: bytes, ring: Keyring = RING, expires_in: float = 60.0,
            node: str = NODE) -> Any:
    return Signer.for_streams(ring).headers(TOPIC, NODE.encode(), value, to_node=node,
                                            expires=int(time.time() + expires_in))


def _feed(e: Enforcer, value: bytes, headers: Any = "signed") -> None:
    if headers == "signed":
        headers = _signed(value)
    e.guard.run(partial(e.on_message, value, headers, NODE.encode()), topic=TOPIC,
                partition=0, offset=1, key=NODE.encode(), value=value)


@pytest.mark.parametrize("value", [
    b'{"schema_version":1,"kind":"verdict","payload":' + b"[" * 1000 + b"]" * 1000 + b"}",
    b"\xff\xfe not json",
    _wire(ExitEvent("w", 5)),  # a record, but not a verdict
    _wire(_block(2**40)),  # a pid no process can have (its kill raised before)
    _wire(_block(0)),
    _wire(_block(1)),
], ids=["nested", "bytes", "not-a-verdict", "huge-pid", "pid-0", "init"])
def test_a_bad_verdict_message_is_counted_and_the_next_one_acted_on(
        tmp_path: Path, value: bytes) -> None:
    e = _enforcer(tmp_path)
    before = _count("invalid")
    _feed(e, value)
    assert _count("invalid") == before + 1 and e.dead_letters == 1
    acted: list[Decision] = []
    e.on_verdict = acted.append  # type: ignore[method-assign, assignment]
    _feed(e, _wire(_block(4242)))
    assert [d.pid for d in acted] == [4242] and e.dead_letters == 1


def test_a_failure_of_the_readers_own_code_is_counted_as_failed(tmp_path: Path) -> None:
    e = _enforcer(tmp_path)

    def broken(d: Decision) -> None:
        raise RuntimeError("a bug")

    e.on_verdict = broken  # type: ignore[method-assign, assignment]
    before = _count("failed")
    _feed(e, _wire(_block(4242)))
    assert _count("failed") == before + 1 and e.dead_letters == 1


def test_another_nodes_verdict_is_ignored(tmp_path: Path) -> None:
    e = _enforcer(tmp_path)
    acted: list[Decision] = []
    e.on_verdict = acted.append  # type: ignore[method-assign, assignment]
    other = Decision(event_id="e2", event_kind=EventKind.EXEC, workload_id="w", node="elsewhere",
                     verdict=Verdict.BLOCK, reason="violation:R0", pid=4242)
    _feed(e, _wire(other))
    assert acted == [] and e.dead_letters == 0


# -- issue 22: who may make this collector kill or release --------------------------------------

def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_verdicts_refused_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A real process of this host: what a forged verdict would kill."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while (read_stat(proc.pid) or read_stat(1)).comm != "sleep":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _published(e: Enforcer, pid: int, workload_id: str = HOST, event_id: str = "ev-1",
               payload: Any = None) -> ExecEvent:
    """The collector published the exec of `pid` (what `Collector.publish` tells it)."""
    stat = read_stat(pid)
    start = stat.start_time if stat is not None else 12345
    ev = payload or ExecEvent(workload_id=workload_id, pid=pid, path="/usr/bin/sleep",
                              start_time=start)
    e.published(event_id, ev)
    return ev


def _verdict(ev: Any, event_id: str = "ev-1", kind: EventKind = EventKind.EXEC,
             **changes: Any) -> bytes:
    fields: dict[str, Any] = dict(event_id=event_id, event_kind=kind,
                                  workload_id=ev.workload_id, node=NODE, verdict=Verdict.BLOCK,
                                  reason="violation:R0", pid=ev.pid, start_time=ev.start_time)
    fields.update(changes)
    return _wire(Decision(**fields))


def _killer(tmp_path: Path, **settings: Any) -> tuple[Enforcer, list[int]]:
    """An enforcer that kills for real, and the pids it tried to."""
    e = _enforcer(tmp_path, dry_run=False, **settings)
    tried: list[int] = []
    kill = e._kill

    def counted(d: Decision) -> None:
        tried.append(d.pid)
        kill(d)

    e._kill = counted  # type: ignore[method-assign]
    return e, tried


def test_a_signed_verdict_for_a_published_event_kills_its_process(
        tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    """The control: what every refusal below differs from by one thing."""
    e, tried = _killer(tmp_path)
    ev = _published(e, child.pid)
    _feed(e, _verdict(ev))
    assert tried == [child.pid]
    assert child.wait(5) == -9


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "expired", "other-node", "garbage"])
def test_a_verdict_not_signed_for_this_node_is_refused(
        tmp_path: Path, child: subprocess.Popen[bytes], case: str) -> None:
    e, tried = _killer(tmp_path)
    ev = _published(e, child.pid)
    value = _verdict(ev)
    cases: dict[str, tuple[str, Any]] = {
        "unsigned": ("unsigned", []),
        "wrong-key": ("mismatch", _signed(value, ring=Keyring.generate())),
        "expired": ("expired", _signed(value, expires_in=-1)),
        "other-node": ("mismatch", _signed(value, node="node-other")),
        "garbage": ("headers", [("pw-auth", b"\x01\xff" + b"x" * 10_000)]),
    }
    reason, headers = cases[case]
    before = _refused(reason)
    _feed(e, value, headers)
    assert _refused(reason) == before + 1 and tried == [] and child.poll() is None
    assert e.dead_letters == 0  # refused, not a message the reader could not handle


def test_unsigned_verdicts_accepted_only_when_asked_and_never_past_the_local_checks(
        tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    e, tried = _killer(tmp_path, accept_unsigned_verdicts=True)
    ev = _published(e, child.pid)
    before = _refused("start_time_zero")
    _feed(e, _verdict(ev, start_time=0), [])
    assert _refused("start_time_zero") == before + 1 and tried == []
    before = _refused("mismatch")
    _feed(e, _verdict(ev), _signed(_verdict(ev), ring=Keyring.generate()))  # wrongly signed
    assert _refused("mismatch") == before + 1 and tried == []
    _feed(e, _verdict(ev), [])
    assert tried == [child.pid]


@pytest.mark.parametrize("case", ["start_time_zero", "unknown_event", "pid", "start_time",
                                  "workload", "kind"])
def test_a_signed_verdict_that_does_not_answer_our_event_kills_nothing(
        tmp_path: Path, child: subprocess.Popen[bytes], case: str) -> None:
    e, tried = _killer(tmp_path)
    ev = _published(e, child.pid)
    other = subprocess.Popen(["sleep", "60"])  # a process the event was not about
    try:
        changes: dict[str, dict[str, Any]] = {
            "start_time_zero": {"start_time": 0},
            "unknown_event": {"event_id": "made-up"},
            "pid": {"pid": other.pid},
            "start_time": {"start_time": ev.start_time + 1},
            "workload": {"workload_id": "c0ffee"},
            "kind": {"kind": EventKind.STDIO},
        }
        change = changes[case]
        reason = case if case in ("start_time_zero", "unknown_event") else "event_mismatch"
        before = _refused(reason)
        _feed(e, _verdict(ev, **change))
        assert _refused(reason) == before + 1 and tried == []
        assert child.poll() is None and other.poll() is None
    finally:
        other.kill()
        other.wait(5)


def test_the_collector_its_answerer_pid_1_and_their_ancestors_are_never_signalled(
        tmp_path: Path) -> None:
    e, tried = _killer(tmp_path)
    answerer = subprocess.Popen(["sleep", "60"])
    e.answerer = type("Link", (), {"process": answerer})()
    try:
        parent = os.getppid()
        # (pid 1 is refused as unreadable before this: test_a_bad_verdict_message_...)
        assert protected_pids((None,)) == {1}
        for i, pid in enumerate((os.getpid(), parent, answerer.pid)):
            ev = _published(e, pid, event_id=f"ev-{i}")
            before = _refused("protected_pid")
            _feed(e, _verdict(ev, event_id=f"ev-{i}"))
            assert _refused("protected_pid") == before + 1, pid
        assert tried == [] and answerer.poll() is None
    finally:
        e.answerer = None
        answerer.kill()
        answerer.wait(5)


def test_a_process_not_in_the_verdicts_workload_is_not_killed(
        tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    """The event said container c0ffee (a collector's record of it, say, before the pid was
    reused by a host process with the same start tick): the process is the host's now."""
    e, tried = _killer(tmp_path)
    ev = _published(e, child.pid, workload_id="c0ffee")
    before = _refused("foreign_workload")
    _feed(e, _verdict(ev))
    assert tried == [child.pid] and _refused("foreign_workload") == before + 1
    assert child.poll() is None


def test_kill_if_same_asks_belongs_through_the_pidfd(child: subprocess.Popen[bytes]) -> None:
    stat = read_stat(child.pid)
    assert stat is not None
    assert kill_if_same(child.pid, stat.start_time, lambda pid: False) == "foreign-workload"
    assert child.poll() is None
    assert kill_if_same(child.pid, stat.start_time, lambda pid: pid == child.pid) == "killed"


def test_a_replayed_verdict_is_refused(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    e = _enforcer(tmp_path)  # dry run: the first one acted on, the process left
    acted: list[str] = []
    e._kill = lambda d: acted.append(d.event_id)  # type: ignore[method-assign]
    ev = _published(e, child.pid)
    value = _verdict(ev)
    headers = _signed(value)
    _feed(e, value, headers)
    before = _refused("replayed")
    _feed(e, value, headers)  # the very record again, still unexpired
    assert acted == ["ev-1"] and _refused("replayed") == before + 1


def test_published_events_are_bounded_in_count_and_age() -> None:
    now = [0.0]
    recent = RecentEvents(3, 10.0, clock=lambda: now[0])
    forgotten = REGISTRY.get_sample_value(
        "procwarden_collector_verdict_events_forgotten_total") or 0.0
    for i in range(5):
        recent.remember(f"e{i}", EventKind.EXEC, HOST, 100 + i, 1)
    assert len(recent) == 3 and recent.get("e0") is None and recent.get("e4") is not None
    assert REGISTRY.get_sample_value(
        "procwarden_collector_verdict_events_forgotten_total") == forgotten + 2
    now[0] = 10.5
    assert recent.get("e4") is None and len(recent) == 0
    acted = ActedOn(2)
    for i in range(3):
        acted.add(f"e{i}", EventKind.EXEC)
    assert ("e0", EventKind.EXEC) not in acted and ("e2", EventKind.EXEC) in acted


def test_an_aged_out_event_is_not_answered(tmp_path: Path, child: subprocess.Popen[bytes]
                                           ) -> None:
    e, tried = _killer(tmp_path, verdict_events_max_age_s=0.05)
    ev = _published(e, child.pid)
    time.sleep(0.1)
    before = _refused("unknown_event")
    _feed(e, _verdict(ev))
    assert _refused("unknown_event") == before + 1 and tried == []


def _sent(e: Enforcer) -> list[ToAnswerer]:
    sent: list[ToAnswerer] = []
    e._send = sent.append  # type: ignore[method-assign, assignment]
    return sent


def test_a_release_must_name_an_exec_this_collector_holds(tmp_path: Path) -> None:
    """The attack: an event id read off procwarden.exec, answered `allow` by anyone."""
    e = _enforcer(tmp_path, dry_run=False)
    sent = _sent(e)
    check = ExecCheck(workload_id="c1", pid=4242, path="/tmp/x", start_time=77)
    e.published("held-1", check)
    release = partial(_verdict, check, kind=EventKind.EXEC_CHECK, verdict=Verdict.ALLOW)
    attempts: list[tuple[str, dict[str, Any], str]] = [
        ("not-held", {}, "no_hold"), ("held-1", {"workload_id": "c2"}, "event_mismatch")]
    for event_id, changes, reason in attempts:
        before = _refused(reason)
        _feed(e, release(event_id=event_id, **changes))
        assert _refused(reason) == before + 1 and sent == []
    # an exec event's id is not a held exec's
    e.published("exec-1", ExecEvent(workload_id="c1", pid=4242, path="/tmp/x", start_time=77))
    before = _refused("no_hold")
    _feed(e, release(event_id="exec-1"))
    assert _refused("no_hold") == before + 1 and sent == []
    value = release(event_id="held-1")
    _feed(e, value)
    assert [(type(m), m.event_id, m.allow) for m in sent  # type: ignore[union-attr]
            ] == [(VerdictMessage, "held-1", True)]
    before = _refused("replayed")
    _feed(e, value)
    assert _refused("replayed") == before + 1 and len(sent) == 1
    unsigned = partial(_feed, e, release(event_id="held-1"), [])
    before = _refused("unsigned")
    unsigned()
    assert _refused("unsigned") == before + 1


def _hold(workload_id: str, pre_exec: bool, **changes: Any) -> bytes:
    fields: dict[str, Any] = dict(workload_id=workload_id, node=NODE, group="nv.web.demo",
                                  policy_version=3, pre_exec=pre_exec, pre_write=False,
                                  policy_stamp="s2")
    fields.update(changes)
    return _wire(HoldSettings(**fields))


def test_hold_settings_need_a_signature_and_a_workload_of_this_node(tmp_path: Path) -> None:
    e = _enforcer(tmp_path)
    e._holds[HOST] = Hold(True, "s1")
    before = _refused("unsigned")
    _feed(e, _hold(HOST, False), [])  # the attack: holding turned off by anyone
    assert e._holds[HOST].pre_exec and _refused("unsigned") == before + 1
    before = _refused("foreign_workload")
    _feed(e, _hold("no-such-container", True))
    assert "no-such-container" not in e._holds and _refused("foreign_workload") == before + 1
    # the piggyback too (any verdict tells the hold settings after a restart)
    _feed(e, _wire(Decision(event_id="x", event_kind=EventKind.EXEC, workload_id="nowhere",
                            node=NODE, verdict=Verdict.ALLOW, reason="rule", pre_exec=True,
                            policy_stamp="s9")))
    assert "nowhere" not in e._holds
    _feed(e, _hold(HOST, False))
    assert not e._holds[HOST].pre_exec  # signed, ours: taken


def test_hold_settings_reach_the_answerer_and_are_kept_across_restarts(tmp_path: Path) -> None:
    e = _enforcer(tmp_path, dry_run=False)
    sent = _sent(e)
    _feed(e, _hold(HOST, True, pre_write=True, fail_mode=FailMode.CLOSED))
    assert sent == [HoldMessage(HOST, True, "s2", True, FailMode.CLOSED)]
    assert e.dead_letters == 0
    _feed(e, _hold(HOST, True, pre_write=True, fail_mode=FailMode.CLOSED))
    assert len(sent) == 1  # the same settings again: nothing to tell
    _feed(e, _hold(HOST, True, node="node-other", policy_stamp="s3"))
    assert len(sent) == 1 and e._holds[HOST].stamp == "s2"  # another node's: not ours
    saved = json.loads((tmp_path / "holds.json").read_text())
    assert Hold.of_fields(saved[HOST]) == Hold(True, "s2", True, FailMode.CLOSED)


def test_a_decision_carries_hold_settings_only_for_a_workload_not_held_yet(
        tmp_path: Path) -> None:
    """The piggyback: after a restart that lost holds.json, the first verdict of a workload
    says how it is held; once held, only `HoldSettings` change it."""
    e = _enforcer(tmp_path, dry_run=False)
    sent = _sent(e)
    allowed = partial(Decision, event_kind=EventKind.EXEC, workload_id=HOST, node=NODE,
                      verdict=Verdict.ALLOW, reason="rule", pre_exec=True)
    _feed(e, _wire(allowed(event_id="a1", policy_stamp="")))
    assert HOST not in e._holds  # no stamp: nothing said
    _feed(e, _wire(allowed(event_id="a2", policy_stamp="s7", pre_write=True)))
    assert e._holds[HOST] == Hold(True, "s7", True, None) and len(sent) == 1
    _feed(e, _wire(allowed(event_id="a3", policy_stamp="s8", pre_exec=False)))
    assert e._holds[HOST] == Hold(True, "s7", True, None) and len(sent) == 1


def test_an_old_style_policy_decision_is_refused_not_acted_on(tmp_path: Path) -> None:
    """Before hold settings had a record of their own they travelled as a `verdict` of event
    kind `policy`, reason `policy-state`: a stream app of that version is not this one's, and
    what it says is refused as unreadable, not taken as a decision's piggyback."""
    e = _enforcer(tmp_path, dry_run=False)
    sent = _sent(e)
    old = orjson.loads(_wire(Decision(
        event_id="p-1", event_kind=EventKind.EXEC, workload_id=HOST, node=NODE,
        verdict=Verdict.NONE, reason="rule", pre_exec=True, policy_stamp="s2")))
    old["payload"].update(event_kind="policy", reason="policy-state")
    value = orjson.dumps(old)
    with pytest.raises(DecodeError, match="reason"):
        decode_envelope(value)
    before = _count("invalid")
    _feed(e, value)
    assert _count("invalid") == before + 1 and e.dead_letters == 1
    assert HOST not in e._holds and sent == []


def test_accepting_unsigned_verdicts_never_lets_one_hold_less(tmp_path: Path) -> None:
    e = _enforcer(tmp_path, accept_unsigned_verdicts=True, fail_mode=FailMode.CLOSED)
    e._holds[HOST] = Hold(True, "s1", True, None)
    weakenings: list[dict[str, Any]] = [
        {"pre_exec": False}, {"pre_exec": True, "pre_write": False},
        {"pre_exec": True, "pre_write": True, "fail_mode": FailMode.OPEN}]
    for weaker in weakenings:
        before = _refused("hold_unsigned")
        pre_exec = weaker.pop("pre_exec")
        _feed(e, _hold(HOST, pre_exec, **weaker), [])
        assert _refused("hold_unsigned") == before + 1 and e._holds[HOST] == Hold(
            True, "s1", True, None), weaker
    _feed(e, _hold(HOST, True, pre_write=True), [])
    assert e._holds[HOST] == Hold(True, "s2", True, None)  # holding as much: a new stamp


def test_refusals_are_logged_once_per_reason_and_source_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(clock=lambda: now[0])
    before = _refused("unsigned")
    with caplog.at_level(logging.WARNING, "procwarden.collector.verdicts"):
        for _ in range(1000):
            refusals.refuse("unsigned", "x", "-")
        refusals.refuse("unsigned", "x", "streams")
        refusals.refuse("mismatch", "x", "-")
        for i in range(5000):  # made-up sources: the table stays bounded
            refusals.refuse("signer", "x", f"node:{i}")
        assert len(refusals._last) <= 1024
        lines = len(caplog.records)
        now[0] = 61.0
        refusals.refuse("unsigned", "x", "-")
    assert _refused("unsigned") == before + 1002
    assert lines == 3 + (1024 - 3) + 1  # each source once, then one line for the flood
    assert "999 more" in caplog.records[-1].getMessage()


def test_stdio_and_uid_change_events_are_remembered_for_their_verdicts(
        tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    e, tried = _killer(tmp_path)
    stat = read_stat(child.pid)
    assert stat is not None
    ev = StdioEvent(workload_id=HOST, pid=child.pid, start_time=stat.start_time)
    e.published("stdio-1", ev)
    _feed(e, _verdict(ev, event_id="stdio-1", kind=EventKind.STDIO))
    assert tried == [child.pid]
