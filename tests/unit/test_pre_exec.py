"""§14: the pre-exec answer, and its invariant: it never denies what post-exec would allow."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    Baseline,
    Decision,
    Envelope,
    EventKind,
    ExecCheck,
    ExecEvent,
    FailMode,
    FileEvent,
    FileOp,
    HoldSettings,
    IncidentAction,
    Mode,
    Origin,
    ProfilePatch,
    RuleSource,
    Verdict,
    reserved_rule_id,
)
from schemas.records import replace
from streams.engine import (
    EngineSettings,
    ProcessState,
    build_view,
    decide,
    hold_settings,
    pre_exec_decide,
)
from streams.worker.session import EditOutcome
from tests.builders import (
    WEB,
    World,
    container,
    custom,
    envelope,
    group,
    host,
    learned_rule,
    rule,
)


def view(rules: tuple[object, ...] = (), mode: Mode = Mode.PROTECT,
         baseline: Baseline = Baseline.BASIC, system: bool = False):  # type: ignore[no-untyped-def]
    policies = {WEB: group(mode=mode, baseline=baseline, rules=rules),  # type: ignore[arg-type]
                "nodes": group("nodes", mode=mode)}
    return build_view(policies, container(system=system), EngineSettings())


CASES = {
    "unlisted is denied": ((), {}, False, "not-in-profile"),
    "allowed by name": ((rule("app", ""),), {}, True, "decided-after-exec"),
    "deny any name first": ((rule("*", "/tmp/*", "deny"), rule("*", "*")), {}, True,
                            "decided-after-exec"),
    "deny any name for the path": ((rule("*", "/opt/*", "deny"), rule("app", "/opt/app")), {},
                                   False, "deny-rule"),
    "named deny is left to post-exec": ((rule("app", "", "deny"),), {}, False, "not-in-profile"),
    "runtime-injected is held for post-exec": ((), {"runtime_injected": True}, True,
                                               "runtime-injected"),
    "busybox is decided after exec": ((), {"exe": "/bin/busybox"}, True, "decided-after-exec"),
    "parent rules defer": ((rule("sh/*", ""),), {}, True, "parent-rules"),
    "exe outside the container": ((), {"exe_on_host": True}, True, "outside-container"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_pre_exec(case: tuple[tuple[object, ...], dict[str, object], bool, str]) -> None:
    rules, facts, allow, reason = case
    exe = str(facts.pop("exe", "/opt/app"))
    answer = pre_exec_decide(view(rules), exe, runtime_injected=bool(facts.get("runtime_injected")),
                             image_file=True, exe_on_host=bool(facts.get("exe_on_host")))
    assert answer.allow is allow
    assert answer.reason.startswith(reason)


def test_pre_exec_zero_drift_new_file() -> None:
    v = view((rule("app", "/opt/app"),), baseline=Baseline.ZERO_DRIFT)
    assert not pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=False).allow
    v = view((rule("app", "/opt/app", allow_update=True),), baseline=Baseline.ZERO_DRIFT)
    assert pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=False).allow


def test_pre_exec_only_in_protect_for_non_system_containers() -> None:
    for v in (view(mode=Mode.MONITOR), view(system=True)):
        assert pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=True).allow
    hv = build_view({"nodes": group("nodes", mode=Mode.PROTECT)}, host(), EngineSettings())
    assert pre_exec_decide(hv, "/opt/app", runtime_injected=False, image_file=True).allow


def test_netcat_paths_are_decided_after_exec() -> None:
    answer = pre_exec_decide(view(), "/usr/bin/nc", runtime_injected=False, image_file=True,
                             netcat_paths=frozenset({"/usr/bin/nc"}))
    assert answer.allow


names = st.sampled_from(["*", "sh", "app", "busybox", "nc"])
paths = st.sampled_from(["", "*", "/*", "/opt/*", "/opt/app", "/usr/*/app", "/tmp/*"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(names, paths, st.sampled_from(["allow", "deny"]), st.booleans(),
                          st.sampled_from([RuleSource.USER_CREATED, RuleSource.LEARNED,
                                           RuleSource.GROUND])), max_size=6),
       st.sampled_from(["/opt/app", "/opt/x/app", "/tmp/app", "/usr/local/app"]),
       st.sampled_from(list(Baseline)), st.booleans(), st.booleans())
def test_pre_exec_never_denies_what_post_exec_allows(
        specs: list[tuple[str, str, str, bool, RuleSource]], exe: str, baseline: Baseline,
        image: bool, family: bool) -> None:
    rules = tuple(rule(n, p, a, allow_update=u, source=s, uuid=f"r{i}", users=())
                  for i, (n, p, a, u, s) in enumerate(specs)
                  if not (n == "*" and p == "") and not (a == "deny" and n == "*" and p in ("*", "/*")))
    v = view(rules, baseline=baseline)
    if pre_exec_decide(v, exe, runtime_injected=False, image_file=image).allow:
        return
    for pname in ("sh", "app", "busybox", "nc", "x", exe.rsplit("/", 1)[-1]):
        ev = ExecEvent(workload_id="c1", pid=5, path=exe, name=pname, argv=(pname,),
                       family=family, origin=Origin.IMAGE if image else Origin.NEW, user="root",
                       parent_name="bash")
        d, _ = decide(v, ProcessState(), envelope(ev))
        assert d.verdict is Verdict.BLOCK, (pname, d.reason)


# ---- the held exec as the stream app sees it: an `exec_check` event decided by `decide` ------

def _check(world: World, path: str, **kw: object) -> Decision:
    kw.setdefault("user", "root")
    return world.decide(ExecCheck(workload_id="c1", pid=77, path=path, name="sh",
                                  start_time=99, **kw))  # type: ignore[arg-type]


CHECKS = {
    "protect, zero-drift, listed but dropped file": (
        Mode.PROTECT, Baseline.ZERO_DRIFT, (learned_rule("dropped", "/tmp/dropped"),),
        {"origin": Origin.NEW}, "/tmp/dropped", Verdict.BLOCK, "pre-exec:not-from-image",
        reserved_rule_id(5)),
    "protect, basic, not in profile": (
        Mode.PROTECT, Baseline.BASIC, (learned_rule("sh", "/bin/sh"),), {}, "/usr/bin/wget",
        Verdict.BLOCK, "pre-exec:not-in-profile", reserved_rule_id(0)),
    "protect, zero-drift, not in profile": (
        Mode.PROTECT, Baseline.ZERO_DRIFT, (learned_rule("sh", "/bin/sh"),), {}, "/usr/bin/wget",
        Verdict.BLOCK, "pre-exec:not-in-profile", reserved_rule_id(7)),
    "protect, deny rule for any name": (
        Mode.PROTECT, Baseline.BASIC, (rule("*", "/opt/*", "deny", uuid="deny-opt"),
                                       rule("app", "/opt/app")), {}, "/opt/app", Verdict.BLOCK,
        "pre-exec:deny-rule:deny-opt", "deny-opt"),
    "protect, listed file": (
        Mode.PROTECT, Baseline.ZERO_DRIFT, (learned_rule("ls", "/bin/ls"),), {}, "/bin/ls",
        Verdict.ALLOW, "pre-exec:decided-after-exec", ""),
    "monitor holds nothing": (
        Mode.MONITOR, Baseline.ZERO_DRIFT, (), {"origin": Origin.NEW}, "/tmp/dropped",
        Verdict.ALLOW, "pre-exec:not-protect", ""),
    "runtime-injected caller": (
        Mode.PROTECT, Baseline.ZERO_DRIFT, (), {"runtime_injected": True}, "/bin/sh",
        Verdict.ALLOW, "pre-exec:runtime-injected", ""),
}


@pytest.mark.parametrize("case", CHECKS.values(), ids=CHECKS.keys())
def test_exec_check_decision(case: tuple[Any, ...]) -> None:
    mode, baseline, rules, facts, path, verdict, reason, rule_id = case
    world = World(groups=[group(mode=mode, baseline=baseline, rules=rules)])
    d = _check(world, path, **facts)
    assert (d.verdict, d.reason, d.event_kind) == (verdict, reason, EventKind.EXEC_CHECK)
    assert d.pre_exec is (mode is Mode.PROTECT)
    assert (d.pid, d.start_time, d.path) == (77, 99, path)
    if verdict is Verdict.BLOCK:
        assert d.incident is not None
        assert d.incident.rule_id == rule_id
        assert d.incident.action is IncidentAction.DENY
        assert d.incident.message.endswith(": execution denied")
        assert d.incident.proc_name == path.rsplit("/", 1)[-1]
    else:
        assert d.incident is None
    assert d.learn is None  # a held exec never teaches: its post-exec event does


def test_an_allowed_exec_check_says_whether_any_caller_would_be_allowed() -> None:
    """What lets a collector have the kernel answer a file's later execs, whoever makes them:
    a runtime-injected caller is allowed whatever the file, the container's own only by rule."""
    world = World(groups=[group(mode=Mode.PROTECT, baseline=Baseline.BASIC,
                                rules=(learned_rule("ls", "/bin/ls"),))])
    listed = _check(world, "/bin/ls", runtime_injected=True)
    unlisted = _check(world, "/usr/bin/wget", runtime_injected=True)
    own = _check(world, "/bin/ls")
    assert (listed.verdict, listed.any_caller) == (Verdict.ALLOW, True)
    assert (unlisted.verdict, unlisted.reason, unlisted.any_caller) == (
        Verdict.ALLOW, "pre-exec:runtime-injected", False)
    assert (own.verdict, own.any_caller) == (Verdict.ALLOW, True)
    denied = _check(world, "/usr/bin/wget")
    assert (denied.verdict, denied.any_caller) == (Verdict.BLOCK, False)


def test_exec_check_sees_drift_the_stream_app_knows_of() -> None:
    world = World(groups=[group(mode=Mode.PROTECT, baseline=Baseline.ZERO_DRIFT,
                                rules=(learned_rule("app", "/opt/app"),))])
    assert _check(world, "/opt/app").verdict is Verdict.ALLOW
    world.decide(FileEvent("c1", FileOp.MODIFY, "/opt/app", executable=True, from_image=True))
    assert _check(world, "/opt/app").verdict is Verdict.BLOCK


def test_policy_stamp_follows_every_policy_the_workload_reads() -> None:
    world = World(groups=[group(mode=Mode.PROTECT)])
    session = world.session
    first = hold_settings(session.view("c1"))
    assert (type(first), first.pre_exec, first.group) == (HoldSettings, True, WEB)
    assert Envelope.wrap(first, event_id="h", node="n", ts=1.0).kind is EventKind.HOLD_SETTINGS
    assert world.exec("/bin/ls").policy_stamp == first.policy_stamp
    # A custom group the workload joins, then a change to it, each give a new stamp.
    session.load_policies([custom("lockdown", (rule("*", "/tmp/*", "deny", group="lockdown"),))])
    second = hold_settings(session.view("c1")).policy_stamp
    assert second != first.policy_stamp
    bumped = replace(session.policies["lockdown"], version=5)
    session.load_policies([bumped])
    assert hold_settings(session.view("c1")).policy_stamp not in (second, first.policy_stamp)
    # Monitor: nothing to hold.
    session.load_policies([replace(session.policies[WEB], mode=Mode.MONITOR,
                                               version=9)])
    assert not hold_settings(session.view("c1")).pre_exec


def test_system_containers_and_hosts_are_never_held() -> None:
    world = World(groups=[group(mode=Mode.PROTECT), group("nodes", mode=Mode.PROTECT)],
                  workloads=[container(system=True), host()])
    assert not hold_settings(world.session.view("c1")).pre_exec
    assert not hold_settings(world.session.view("host-1")).pre_exec


def test_writes_are_held_only_in_zero_drift_protect_containers() -> None:
    world = World(groups=[group(mode=Mode.PROTECT, baseline=Baseline.ZERO_DRIFT),
                          group("nodes", mode=Mode.PROTECT)],
                  workloads=[container(), container("c2", system=True), host()])
    session = world.session
    assert hold_settings(session.view("c1")).pre_write
    assert not hold_settings(session.view("c2")).pre_write  # system: alert only
    assert not hold_settings(session.view("host-1")).pre_write
    session.load_policies([replace(session.policies[WEB], baseline=Baseline.BASIC,
                                               version=7)])
    basic = hold_settings(session.view("c1"))
    assert basic.pre_exec and not basic.pre_write


def test_the_group_fail_mode_reaches_its_collectors() -> None:
    world = World(groups=[group(mode=Mode.PROTECT)])
    assert hold_settings(world.session.view("c1")).fail_mode is None
    world.send(ProfilePatch(group=WEB, fail_mode="closed"))
    state = hold_settings(world.session.view("c1"))
    assert state.fail_mode is FailMode.CLOSED
    assert world.exec("/bin/ls").fail_mode is FailMode.CLOSED  # every verdict carries it
    world.send(ProfilePatch(group=WEB, fail_mode="DEFAULT"))
    assert hold_settings(world.session.view("c1")).fail_mode is None
    answer = world.send(ProfilePatch(group=WEB, fail_mode="half-open"))
    assert isinstance(answer, EditOutcome) and answer.status == 400
    assert "unknown fail mode" in answer.reason
