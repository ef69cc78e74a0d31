"""Floods from a real container (issue 21): real runc container, real collector, real stream
worker, real Kafka. The engine's caps are lowered so that a few dozen execs or files are a
flood; what is checked is what the pipeline makes of it end to end.

- A zero-drift container that creates more executables than the drift set keeps: its process
  state stays small enough to publish, one `Container.Profile.Overflow` incident says so, and
  the container counts as drifted from then on (fail closed), even for its image files.
- A Discover container that runs more distinct programs than its group may learn: the group's
  record stays publishable and is marked capped (by its writer: the burst's learns overtake
  the policy they fill), the workload's next refused learn raises one overflow incident, and
  an admin can still switch the group to Monitor, where what it did not learn is a violation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procwarden.testbed.containers import APP_LOOP, Container, run_container
from schemas import (
    Decision,
    Envelope,
    EventKind,
    GroupPolicy,
    Incident,
    Mode,
    ProcessSnapshot,
    RuleSource,
    ServiceConfig,
    Verdict,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import POLICY, POLICY_UPDATES, PROCESS_STATE, SECURITY_EVENTS, VERDICTS
from tests.integration.streamkit import WORKDIR, Pipeline, running_collector

NODE = "node-flood"
CAP = 8  # drift files per workload, and learned rules per group, for these tests
MB = 1_000_000
# BusyBox applets that stay up while their input is open: each one a distinct program, alive
# long enough for /proc to be read (so its name is known, not only its file).
READERS = ("cat", "wc", "od", "base64", "tr", "tee", "rev", "uniq", "nl", "expand", "strings",
           "sed", "grep", "more", "tail")


@pytest.fixture
def pipe(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka, tmp_path)
    p.start_worker(STREAMS_MAX_DRIFT_PATHS=str(CAP), STREAMS_MAX_LEARNED_RULES=str(CAP))
    try:
        yield p
    finally:
        p.stop_workers()


def _verdict(pipe: Pipeline, box: Container, test: Callable[[Decision], bool],
             timeout: float = 60.0) -> Decision:
    env, _ = pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                           and e.payload.workload_id == box.id and test(e.payload),
                           timeout=timeout)
    assert isinstance(env.payload, Decision)
    return env.payload


def _run_until(pipe: Pipeline, box: Container, command: str, test: Callable[[Decision], bool],
               tries: int = 4) -> Decision:
    """Runs `command` in the box until one of its verdicts passes `test`.

    A policy change reaches the decider on another topic than the exec after it, so the first
    exec may still be judged by the older policy; the next ones are judged by the new one."""
    for _ in range(tries - 1):
        assert box.app(f"{command}; echo ok")[1].endswith("ok\n")
        try:
            return _verdict(pipe, box, test, timeout=15.0)
        except AssertionError:
            pass
    assert box.app(f"{command}; echo ok")[1].endswith("ok\n")
    return _verdict(pipe, box, test)


def _policy(pipe: Pipeline, group: str, test: Callable[[GroupPolicy], bool]) -> GroupPolicy:
    env, _ = pipe.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                           and e.payload.name == group and test(e.payload))
    assert isinstance(env.payload, GroupPolicy)
    return env.payload


def _overflows(pipe: Pipeline, box: Container) -> list[Incident]:
    def overflow(e: Envelope) -> bool:
        return (isinstance(e.payload, Incident) and e.payload.workload_id == box.id
                and e.payload.name == "Container.Profile.Overflow")

    pipe.wait_for(SECURITY_EVENTS.name, overflow)  # the first, then all of them
    return [e.payload for e in pipe.read_all(SECURITY_EVENTS.name, settle=5)
            if overflow(e) and isinstance(e.payload, Incident)]


def _started(pipe: Pipeline, box: Container, group: str) -> None:
    assert box.app("sleep 1; echo ready") == (0, "ready\n")  # seen, announced, group made
    _verdict(pipe, box, lambda d: d.group == group)


def test_a_drift_flood_from_a_container_overflows_once_and_fails_closed(
        pipe: Pipeline, tmp_path: Path) -> None:
    group = "nv.drift.flood"
    with run_container(WORKDIR, "drift", namespace="flood", command=APP_LOOP) as box, \
            running_collector(pipe, NODE, tmp_path):
        _started(pipe, box, group)
        pipe.send(POLICY_UPDATES.name, group, ServiceConfig(
            services=("drift.flood",), profile_mode="Monitor", baseline_profile="zero-drift"))
        _policy(pipe, group, lambda g: g.mode is Mode.MONITOR)
        rc, out = box.app(f"for i in $(seq 1 {3 * CAP}); do cp /bin/busybox /tmp/drop$i; done; "
                          "sleep 1; echo done", timeout=120)
        assert out.endswith("done\n"), (rc, out)
        created = _verdict(pipe, box, lambda d: d.capped == "drift_paths")
        assert created.event_kind is EventKind.FILE
        # An image file now: drifted, since the engine no longer knows which files drifted.
        assert box.app("sleep 1; echo ok") == (0, "ok\n")
        after = _verdict(pipe, box, lambda d: d.name == "sleep" and d.pid != box.init_pid
                         and d.reason == "violation:R5")
        assert after.verdict is Verdict.ALERT  # Monitor
        (overflow,) = _overflows(pipe, box)
        assert "treated as drifted" in overflow.message
        states = [(e.payload, len(encode(e))) for e in pipe.read_all(PROCESS_STATE.name)
                  if isinstance(e.payload, ProcessSnapshot) and e.payload.workload_id == box.id]
        assert states and all(size < MB for _, size in states)
        last = states[-1][0]
        assert len(last.drift) <= CAP and "drift_paths" in last.overflow


def test_a_learning_flood_from_a_container_is_capped_and_the_group_can_leave_discover(
        pipe: Pipeline, tmp_path: Path) -> None:
    group = "nv.learn.flood"
    with run_container(WORKDIR, "learn", namespace="flood", command=APP_LOOP) as box, \
            running_collector(pipe, NODE, tmp_path):
        _started(pipe, box, group)  # Discover, the default for a new group
        readers = " ".join(READERS)
        rc, out = box.app(f"for a in {readers}; do sleep 2 | $a > /dev/null & done; wait; "
                          "echo done", timeout=120)
        assert out.endswith("done\n"), (rc, out)
        # The burst's learns overtake the policy they fill: the group's writer caps it.
        policy = _policy(pipe, group, lambda g: bool(g.learn_capped))
        learned = {r.name for r in policy.rules if r.cfg_type is RuleSource.LEARNED}
        assert len(learned) <= CAP
        unlearned = [a for a in READERS if a not in learned]
        # An exec the decider judged before it saw the cap is refused by the writer: still
        # unlearned, so the same program can be run again until the decider says capped.
        capped = _run_until(pipe, box, f"sleep 2 | {unlearned[0]} > /dev/null",
                            lambda d: d.name == unlearned[0] and d.reason == "learn-capped")
        assert capped.capped == "learned_rules" and capped.verdict is Verdict.ALLOW
        (overflow,) = _overflows(pipe, box)
        assert "learning stopped" in overflow.message
        # The admin switches it out of Discover; what it did not learn is now a violation.
        pipe.send(POLICY_UPDATES.name, group, ServiceConfig(
            services=("learn.flood",), profile_mode="Monitor"))
        _policy(pipe, group, lambda g: g.mode is Mode.MONITOR)
        # Judged in Discover still, it is allowed unlearned (capped): run it until Monitor meets it.
        alert = _run_until(pipe, box, f"sleep 2 | {unlearned[1]} > /dev/null",
                           lambda d: d.name == unlearned[1] and d.verdict is Verdict.ALERT)
        assert alert.reason.startswith("violation:")
        records = [len(encode(e)) for e in pipe.read_all(POLICY.name)
                   if isinstance(e.payload, GroupPolicy) and e.payload.name == group]
        assert records and max(records) < MB
